-- billing._available_usd(balance_usd, held_usd) -> numeric
-- The available balance: the balance less the open holds. A new hold or charge must fit in it
-- (billing._refuse_unaffordable, the fast paths of charge and reserve); a settlement charges above its own
-- hold only what fits in it (billing._settlement_cover, settle's fast path). Inlined into the fast paths.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._available_usd(p_balance_usd numeric, p_held_usd numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$ SELECT p_balance_usd - p_held_usd $$;
