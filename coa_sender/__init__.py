"""The CoA sidecar: Disconnect-Request and CoA-Request (RFC 5176) to the NAS, off the
radiusd hook path. ``python -m coa_sender`` (``wificore-coa``); see docs/coa.md."""
