-- BlastRADIUS (CVE-2024-3596): a NAS may be required to sign every
-- Access-Request with a Message-Authenticator; radiusd then drops its requests
-- that carry none. The dynamic client lookup hands the flag to radiusd
-- (FreeRADIUS-Client-Require-MA, FreeRADIUS 3.2.1 and 3.2.7).
--
-- Rows that exist, and rows written without the column (bulk loads), keep
-- today's behaviour (false): a NAS whose firmware sends no Message-Authenticator
-- (RouterOS before 7.15) would otherwise lose every login. `wificore-admin nas
-- add` sets it to true unless told otherwise (README.md, docs/decisions.md).
ALTER TABLE nas ADD COLUMN IF NOT EXISTS require_message_authenticator boolean NOT NULL DEFAULT false;
