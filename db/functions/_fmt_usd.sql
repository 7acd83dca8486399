-- billing._fmt_usd(amount) -> text
-- An amount for people: trailing zeros trimmed ("0.02", "10"), used in error messages.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._fmt_usd(p_amount numeric)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT trim_scale(p_amount)::text $$;
