/**
 * What a CloudPanel server's row may hold: the same patterns as the check constraints of
 * hosting_automator.servers, written here once for TypeScript (configuration reads them), and the defaults of
 * its columns. tests/boundary.test.ts reads the constraints and defaults from a migrated database and checks
 * that both sides state the same rules: the same pattern text, and the same answers for a table of inputs.
 */

/** A server's name: 1 to 63 of a-z, 0-9 and `-`, not starting with `-`. */
export const SERVER_NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
/** The SSH user: a Linux user name. */
export const SSH_USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
/** The host key's fingerprint as `ssh-keygen -lf` prints it: `SHA256:` and 43 base64 characters. */
export const HOST_KEY_RE = /^SHA256:[A-Za-z0-9+/]{43}$/;
/** A host name, an IPv4 address or an IPv6 address (without brackets), at most 253 characters. */
export const SERVER_HOST_RE = /^[A-Za-z0-9:]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9:])?$/;

/** A fingerprint as an operator may paste it: some tools keep base64's `=` padding, which is dropped. */
export const HOST_KEY_INPUT_RE = new RegExp(`${HOST_KEY_RE.source.slice(0, -1)}=?$`);

/** The columns' defaults, which configuration also applies to the server it registers as `default`. */
export const DEFAULT_SSH_PORT = 22;
export const DEFAULT_SSH_USER = "root";
