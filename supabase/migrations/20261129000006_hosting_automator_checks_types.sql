-- The steps that check around the certificate, added to the step names alone in their migration: a value added
-- to an enum can be used only once the transaction that added it has committed.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

-- Before the certificate: the names it will cover resolve to the server's public addresses.
alter type hosting_automator.step_name add value if not exists 'dns_check' before 'ssl_certificate';
-- After it: the site serves a valid certificate for its domain.
alter type hosting_automator.step_name add value if not exists 'https_verify' after 'ssl_certificate';
