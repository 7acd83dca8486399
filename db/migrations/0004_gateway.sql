-- depends: 0003_owner_role
-- What the gateway needs beyond the ledger: API keys (stored as SHA-256 digests, never in clear) and
-- the indexes behind billing.estimate_price and billing.unbilled_calls.
-- New tables belong to tollgate_owner like the rest (0003); `tollgate migrate` re-owns functions and
-- views on every run, but not tables, so this migration does it itself.

-- One row per API key. `name` is the client key recorded in cost_tracking.client_key for the key's
-- calls. A key bound to a user (user_id) bills that user; an unbound key is a known client whose calls
-- are tracked, not charged. Revoking sets revoked_at; rows are never deleted, so a name is never reused
-- and old cost_tracking rows keep pointing at one client.
CREATE TABLE billing.api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CONSTRAINT api_keys_name_unique UNIQUE
                CONSTRAINT api_keys_name_format CHECK (name ~ '^[A-Za-z0-9._-]{1,100}$'),
    -- SHA-256 digest of the whole key: the lookup is by digest, through this unique index.
    key_hash    bytea NOT NULL CONSTRAINT api_keys_key_hash_unique UNIQUE
                CONSTRAINT api_keys_key_hash_sha256 CHECK (octet_length(key_hash) = 32),
    -- The first characters of the key, shown in listings so an operator can tell keys apart.
    key_prefix  text CONSTRAINT api_keys_key_prefix_length CHECK (key_prefix IS NULL OR length(key_prefix) BETWEEN 1 AND 16),
    user_id     uuid REFERENCES billing.users (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT api_keys_revoked_after_created CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);
CREATE INDEX api_keys_user_id ON billing.api_keys (user_id) WHERE user_id IS NOT NULL;
ALTER TABLE billing.api_keys OWNER TO tollgate_owner;

-- billing.estimate_price: the newest 200 priced, completed calls of a tool, read from the index alone.
CREATE INDEX cost_tracking_completed_by_tool ON billing.cost_tracking (tool_name, id DESC) INCLUDE (price_usd)
    WHERE status = 'completed' AND price_usd IS NOT NULL;
-- billing.unbilled_calls: pending calls are few at any time, so this index stays small.
CREATE INDEX cost_tracking_pending ON billing.cost_tracking (created_at) WHERE status = 'pending';
