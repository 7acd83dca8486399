-- billing._check_text(value, field, max_length, required, free_text) -> text
-- Validates a text argument: required ones must be present and not blank; none may be longer than
-- max_length; identifiers (request ids, payment ids, keys) may not contain control characters, free
-- text (descriptions, reasons) may.
-- Returns the value unchanged.
-- Locks: none.  Errors: BL009 invalid_argument.
CREATE OR REPLACE FUNCTION billing._check_text(
    p_value text, p_field text, p_max_length integer DEFAULT 200, p_required boolean DEFAULT true,
    p_free_text boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_problem text;
BEGIN
    IF p_value IS NULL OR btrim(p_value) = '' THEN
        IF NOT p_required THEN
            RETURN NULL;
        END IF;
        v_problem := 'is required and must not be empty';
    ELSIF length(p_value) > p_max_length THEN
        v_problem := format('is too long (%s characters; at most %s)', length(p_value), p_max_length);
    ELSIF NOT p_free_text AND p_value ~ '[[:cntrl:]]' THEN
        v_problem := 'must not contain control characters';
    ELSE
        RETURN p_value;
    END IF;
    RAISE EXCEPTION 'Invalid argument: % %.', p_field, v_problem
        USING ERRCODE = 'BL009',
              DETAIL = jsonb_build_object('field', p_field, 'length', length(p_value), 'max_length', p_max_length)::text;
END;
$$;
