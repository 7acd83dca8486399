-- billing._available_usd(balance_usd, held_usd, cooling_usd) -> numeric
-- The available balance: the balance less the open holds and less the fresh card credit of a new payer that
-- is not spendable yet (user_billing.cooling_usd, the cooling-off of docs/abuse.md; 0 for most accounts).
-- A new hold or charge must fit in it (billing._refuse_unaffordable, the fast paths of charge and reserve);
-- a settlement charges above its own hold only what fits in it (billing._settlement_cover, settle's fast
-- path). Inlined into the fast paths, which pass the stored cooling_usd: once cooling_until has passed that
-- is stale and errs on the safe side (the fast path declines, the exact path's billing._load_account stops
-- counting it and writes it down), so no clock is needed here.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._available_usd(p_balance_usd numeric, p_held_usd numeric, p_cooling_usd numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$ SELECT p_balance_usd - p_held_usd - p_cooling_usd $$;
