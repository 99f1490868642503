-- IPv6 (issue 16). In the Access-Accept: a subscriber's own Framed-IPv6-Prefix
-- (RFC 3162) and Delegated-IPv6-Prefix (RFC 4818, DHCPv6 prefix delegation), a
-- plan's Framed-IPv6-Pool (the NAS's pool name, as framed_pool for IPv4). From
-- accounting: what the NAS reports, on the session's row (the first value kept,
-- as framed_ip). The subscriber's are cidr (PostgreSQL refuses host bits, as
-- wificore-admin does); the session's inet: a NAS's value is stored as sent, and
-- one with host bits set must not fail the writer's whole COPY.
ALTER TABLE subscribers
    ADD COLUMN IF NOT EXISTS framed_ipv6_prefix cidr CHECK (family(framed_ipv6_prefix) = 6),
    ADD COLUMN IF NOT EXISTS delegated_ipv6_prefix cidr CHECK (family(delegated_ipv6_prefix) = 6);
ALTER TABLE plans
    ADD COLUMN IF NOT EXISTS framed_ipv6_pool text CHECK (length(framed_ipv6_pool) BETWEEN 1 AND 64);
-- Not in any index: Interim merges stay HOT (0003).
ALTER TABLE sessions
    ADD COLUMN IF NOT EXISTS framed_ipv6_prefix inet,
    ADD COLUMN IF NOT EXISTS delegated_ipv6_prefix inet,
    ADD COLUMN IF NOT EXISTS framed_interface_id text;
