-- Vendor dialects (issue 16): a plan's rate rendered for IOS-XR BNG, Huawei,
-- Juniper and accel-ppp NAS too (wificore/vendors.py, README.md "Vendor dialects").
-- The names are those of wificore.vendors.VENDORS; rows that exist keep theirs.
ALTER TABLE nas DROP CONSTRAINT IF EXISTS nas_vendor_check;
ALTER TABLE nas ADD CONSTRAINT nas_vendor_check CHECK (vendor IN (
    'mikrotik', 'wispr', 'cisco', 'cisco-xr', 'huawei', 'juniper', 'accel-ppp', 'generic'));
