-- billing._check_metadata(metadata) -> jsonb
-- Metadata attached to a ledger row must be a JSON object of at most 16 KiB; NULL becomes '{}'.
-- Locks: none.  Errors: BL009 invalid_argument.
CREATE OR REPLACE FUNCTION billing._check_metadata(p_metadata jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_metadata IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    IF jsonb_typeof(p_metadata) <> 'object' THEN
        RAISE EXCEPTION 'Invalid argument: metadata must be a JSON object, not %.', jsonb_typeof(p_metadata)
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'metadata')::text;
    END IF;
    IF octet_length(p_metadata::text) > 16384 THEN
        RAISE EXCEPTION 'Invalid argument: metadata is larger than 16 KiB.'
            USING ERRCODE = 'BL009',
                  DETAIL = jsonb_build_object('field', 'metadata', 'bytes', octet_length(p_metadata::text))::text;
    END IF;
    RETURN p_metadata;
END;
$$;
