-- billing.ensure_account(external_id, email, name) -> uuid
-- The user id for an external subject (a JWT `sub`), creating the user and its billing account on
-- first sight with the original system's defaults (balance 0, daily limit 10 USD, monthly limit
-- 100 USD, active, billing enabled). Race-free: concurrent first calls for the same subject all get
-- the same id and exactly one account exists (INSERT ... ON CONFLICT). A later call with a different
-- email or name updates them; NULL keeps what is stored.
-- Locks: the users row only when email/name change.
-- Errors: BL009 invalid_argument (empty/over-long subject, email over 320 or name over 200 characters).
CREATE OR REPLACE FUNCTION billing.ensure_account(
    p_external_id text, p_email text DEFAULT NULL, p_name text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_user billing.users;
BEGIN
    PERFORM billing._check_text(p_external_id, 'external_id', 255);
    PERFORM billing._check_text(p_email, 'email', 320, false);
    PERFORM billing._check_text(p_name, 'name', 200, false, true);
    SELECT * INTO v_user FROM billing.users WHERE external_id = p_external_id;
    IF NOT FOUND THEN
        INSERT INTO billing.users (external_id, email, name)
        VALUES (p_external_id, nullif(btrim(p_email), ''), nullif(btrim(p_name), ''))
        ON CONFLICT (external_id) DO NOTHING
        RETURNING * INTO v_user;
        IF v_user.id IS NULL THEN
            -- Another transaction created it first; its row is committed and visible now.
            SELECT * INTO v_user FROM billing.users WHERE external_id = p_external_id;
        END IF;
        INSERT INTO billing.user_billing (user_id) VALUES (v_user.id) ON CONFLICT (user_id) DO NOTHING;
    ELSIF (nullif(btrim(p_email), '') IS NOT NULL AND p_email IS DISTINCT FROM v_user.email)
       OR (nullif(btrim(p_name), '') IS NOT NULL AND p_name IS DISTINCT FROM v_user.name) THEN
        UPDATE billing.users
           SET email = coalesce(nullif(btrim(p_email), ''), email),
               name = coalesce(nullif(btrim(p_name), ''), name)
         WHERE id = v_user.id;
    END IF;
    RETURN v_user.id;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.ensure_account(text, text, text) TO tollgate_metering, tollgate_operator;
