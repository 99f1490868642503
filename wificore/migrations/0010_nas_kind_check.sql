-- A subscriber's kind (pppoe / hotspot) is enforced per NAS (issue 16): with
-- kind_check 'strict' a login whose request says it is for the other kind
-- (Framed-Protocol = PPP, Service-Type = Login-User, a wireless or PPPoE
-- NAS-Port-Type; rlm_wificore/policy.py service_kind) is rejected as
-- wrong_service; a request that does not say is accepted. 'off': never checked.
--
-- Existing rows get 'strict' too: what a request does not say is accepted, so
-- only a subscriber stored with the other kind is turned away (docs/decisions.md).
-- The dynamic client lookup hands the setting to radiusd in the client shortname
-- (`<tenant>:<nas>:<vendor>:kind-off`), read once per client by the module.
ALTER TABLE nas ADD COLUMN IF NOT EXISTS kind_check text NOT NULL DEFAULT 'strict'
    CHECK (kind_check IN ('strict', 'off'));
