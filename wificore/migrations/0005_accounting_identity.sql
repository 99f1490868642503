-- Accounting: line identification, liveness on the receiving clock, counter flags
-- (issue 14, points 3-5; docs/batch-writer.md "Accounting per NAS family").
--
-- received_at: when radiusd received the session's latest record (its clock, not
-- the NAS's). stale_at is computed from it from now on, so a NAS whose clock is off
-- by hours no longer flaps its sessions; updated_at stays the NAS's event time, and
-- updated_at - received_at is the NAS's clock skew, per row, for the NOC.
-- nas_port_id, called_station_id, nas_identifier: the line (NAS-Port-Id: the
-- Huawei/Juniper/accel-ppp/Cisco port or VLAN string; Called-Station-Id: the AP's
-- MAC and SSID, or MikroTik's hotspot name; NAS-Identifier: the NAS's own name).
-- counter_flags: bit 1 = a counter was implausible and refused, bit 2 = a counter
-- went backwards (counted from its new value on); see the counter rules.
-- New columns are in no index: Interim merges stay HOT (0003).
ALTER TABLE sessions
    ADD COLUMN received_at timestamptz,
    ADD COLUMN nas_port_id text,
    ADD COLUMN called_station_id text,
    ADD COLUMN nas_identifier text,
    ADD COLUMN counter_flags integer NOT NULL DEFAULT 0;

-- 0.0.0.0 from a Start is no address: let the next Interim's real one in.
UPDATE sessions SET framed_ip = NULL
WHERE stopped_at IS NULL AND framed_ip IN ('0.0.0.0'::inet, '::'::inet);
