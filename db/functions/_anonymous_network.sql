-- billing._anonymous_network(client_ip) -> inet
-- The network an anonymous caller's address is counted under (billing.anonymous_usage, the daily quota):
-- an IPv4 address as it is (/32: a /24 would lump unrelated neighbours behind one NAT together), an IPv6
-- address's /64 (one host is usually given a whole /64, so counting single IPv6 addresses would let it
-- rotate through billions of them). The prefixes are abuse policy figures, anonymous.ipv4_prefix (default
-- 32) and anonymous.ipv6_prefix (default 64), clamped to the family's range. An unknown address (NULL: a
-- unix socket, an in-process client) is 0.0.0.0/0: every such caller shares one count.
-- Locks: none.  Errors: none.
-- PL/pgSQL, not SQL: its body is checked when first called, after every file (billing._policy sorts later).
CREATE OR REPLACE FUNCTION billing._anonymous_network(p_client_ip inet)
RETURNS inet
LANGUAGE plpgsql STABLE
SET search_path = billing, pg_temp
AS $$
BEGIN
    IF p_client_ip IS NULL THEN
        RETURN inet '0.0.0.0/0';
    ELSIF family(p_client_ip) = 4 THEN
        RETURN network(set_masklen(p_client_ip,
                   least(32, greatest(0, floor(billing._policy('anonymous.ipv4_prefix', 32))))::integer))::inet;
    END IF;
    RETURN network(set_masklen(p_client_ip,
               least(128, greatest(0, floor(billing._policy('anonymous.ipv6_prefix', 64))))::integer))::inet;
END;
$$;
