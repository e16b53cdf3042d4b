/**
 * Configuration is validated once: a bad value stops with the variable's name and the rule, never the value.
 */
import assert from "node:assert/strict";
import { loadConfig, secretsOf, sshConfigFor } from "../supabase/functions/hosting-automator/config.ts";
import { createApp } from "../supabase/functions/hosting-automator/app.ts";
import { isHostingError } from "../supabase/functions/hosting-automator/errors.ts";

const KEY =
  "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBt0ps3cr3tK3yMaterialAAAAAAAAAAAAAAAAAAAAAAAAAoAoGCCqGSM49\n-----END EC PRIVATE KEY-----\n";
const VALID = {
  SUPABASE_URL: "https://project.supabase.co",
  SUPABASE_SECRET_KEYS: JSON.stringify({ default: "sb_secret_config_test_value" }),
  CLOUDPANEL_SSH_HOST: "cp.example.com",
  CLOUDPANEL_SSH_PRIVATE_KEY: KEY,
  CLOUDPANEL_SSH_HOST_KEY: "SHA256:" + "a".repeat(43),
  MATOMO_API_URL: "https://matomo.example.com",
  MATOMO_API_TOKEN: "0123456789abcdef0123456789abcdef",
};

function refusal(env: Record<string, string | undefined>): string {
  try {
    loadConfig(env);
  } catch (error) {
    assert.ok(isHostingError(error));
    assert.equal(error.code, "config_invalid");
    return error.publicMessage;
  }
  throw new Error("the configuration was accepted");
}

Deno.test("a valid configuration gets the documented defaults", () => {
  const config = loadConfig(VALID);
  assert.equal(config.fleet.defaultServer?.port, 22);
  assert.equal(config.fleet.defaultServer?.user, "root");
  assert.equal(config.store.kind, "rpc");
  assert.equal(config.budgetMs, 130_000);
  assert.equal(config.wallClockMs, null, "unset: the free plan's limit on the Edge Runtime, none elsewhere");
  assert.equal(config.leaseSeconds, 30);
  assert.equal(config.timeouts.certificateMs, 120_000);
  assert.equal(config.matomo?.timeoutMs, 15_000);
  assert.deepEqual(config.authKeys, ["sb_secret_config_test_value"]);
});

Deno.test("each bad value is refused with its variable's name and the rule, without echoing the value", () => {
  const cases: Array<[Record<string, string | undefined>, RegExp]> = [
    [
      { CLOUDPANEL_SSH_HOST_KEY: undefined },
      /^CLOUDPANEL_SSH_HOST_KEY: is required when CLOUDPANEL_SSH_HOST is set$/,
    ],
    [
      { CLOUDPANEL_SSH_PRIVATE_KEY: undefined },
      /^CLOUDPANEL_SSH_PRIVATE_KEY: is required \(or CLOUDPANEL_SSH_PRIVATE_KEYS, a key per server\)$/,
    ],
    [{ CLOUDPANEL_SSH_PRIVATE_KEYS: "{not json" }, /^CLOUDPANEL_SSH_PRIVATE_KEYS: must be a JSON object/],
    [
      { CLOUDPANEL_SSH_PRIVATE_KEYS: JSON.stringify({ "Bad Name": KEY }) },
      /^CLOUDPANEL_SSH_PRIVATE_KEYS: has a server name that is not/,
    ],
    [
      { CLOUDPANEL_SSH_PRIVATE_KEYS: JSON.stringify({ "cp-2": "secret-but-not-a-key" }) },
      /^CLOUDPANEL_SSH_PRIVATE_KEYS: the key of server cp-2 must be the text of a PEM or OpenSSH private key/,
    ],
    [{ CLOUDPANEL_SSH_HOST: "bad host;rm" }, /^CLOUDPANEL_SSH_HOST: must be a host name or an IP address$/],
    [{ CLOUDPANEL_SSH_PORT: "70000" }, /^CLOUDPANEL_SSH_PORT: must be a port number from 1 to 65535$/],
    [{ CLOUDPANEL_SSH_USER: "Root User" }, /^CLOUDPANEL_SSH_USER: must be a Linux user name$/],
    [
      { CLOUDPANEL_SSH_PRIVATE_KEY: "secret-but-not-a-key" },
      /^CLOUDPANEL_SSH_PRIVATE_KEY: must be the text of a PEM or OpenSSH private key/,
    ],
    [{ CLOUDPANEL_SSH_HOST_KEY: "MD5:aa:bb" }, /^CLOUDPANEL_SSH_HOST_KEY: must be the host key fingerprint/],
    [{ MATOMO_API_TOKEN: undefined }, /^MATOMO_API_TOKEN: is required when the other Matomo setting is set$/],
    [{ MATOMO_API_TOKEN: "short" }, /^MATOMO_API_TOKEN: must be a Matomo token_auth/],
    [
      { MATOMO_API_URL: "http://matomo.example.com" },
      /^MATOMO_API_URL: must use https \(plain http only on localhost\)$/,
    ],
    [{ SUPABASE_SECRET_KEYS: "{not json" }, /^SUPABASE_SECRET_KEYS: must be a JSON object/],
    [{ SUPABASE_SECRET_KEYS: undefined }, /^SUPABASE_SECRET_KEYS: or SUPABASE_SERVICE_ROLE_KEY is required/],
    [{ SUPABASE_URL: undefined }, /^SUPABASE_URL: is required when HOSTING_STORE is rpc$/],
    [{ HOSTING_STORE: "postgres" }, /^SUPABASE_DB_URL: is required when HOSTING_STORE is postgres$/],
    [{ HOSTING_STORE: "redis" }, /^HOSTING_STORE: must be "rpc" or "postgres"$/],
    [
      { HOSTING_TIME_BUDGET_SECONDS: "5" },
      /^HOSTING_TIME_BUDGET_SECONDS: must be a whole number of seconds from 10 to 3600$/,
    ],
    [{ HOSTING_LOG_LEVEL: "loud" }, /^HOSTING_LOG_LEVEL: must be debug, info, warn or error$/],
  ];
  for (const [change, expected] of cases) {
    const message = refusal({ ...VALID, ...change });
    assert.match(message, expected);
    for (const value of Object.values(change)) {
      // Longer than any rule word ("postgres" is part of a rule): these values are what must not be echoed.
      if (value && value.length > 8) assert.ok(!message.includes(value), `${message} echoes the value`);
    }
  }
});

Deno.test("without CLOUDPANEL_SSH_HOST the servers come from the database; a server's own key overrides the shared one", () => {
  const other = KEY.replace("PRIVATE KEY-----\n", "PRIVATE KEY-----\nAAAA");
  const config = loadConfig({
    ...VALID,
    CLOUDPANEL_SSH_HOST: undefined,
    CLOUDPANEL_SSH_HOST_KEY: undefined,
    CLOUDPANEL_SSH_PRIVATE_KEYS: JSON.stringify({ "cp-2": other }),
  });
  assert.equal(config.fleet.defaultServer, null);
  const server = {
    name: "cp-1",
    host: "cp1.example",
    port: 22,
    user: "root",
    hostKey: `SHA256:${"A".repeat(43)}`,
  };
  assert.equal(sshConfigFor(config.fleet, server).privateKey, KEY, "the shared key by default");
  assert.equal(sshConfigFor(config.fleet, { ...server, name: "cp-2" }).privateKey, other, "its own key");
  assert.ok(secretsOf(config).includes(other), "every key is a secret");
  const onlyOwn = loadConfig({
    ...VALID,
    CLOUDPANEL_SSH_PRIVATE_KEY: undefined,
    CLOUDPANEL_SSH_PRIVATE_KEYS: JSON.stringify({ "cp-2": other }),
  });
  assert.throws(() => sshConfigFor(onlyOwn.fleet, server), /no SSH key for server cp-1/);
});

Deno.test("a private key given on one line with \\n escapes is accepted", () => {
  const config = loadConfig({ ...VALID, CLOUDPANEL_SSH_PRIVATE_KEY: KEY.trim().replaceAll("\n", "\\n") });
  assert.equal(config.fleet.sharedKey, KEY);
});

Deno.test("every secret of the configuration is known to the redactor", () => {
  const secrets = secretsOf(loadConfig(VALID));
  for (const value of ["sb_secret_config_test_value", KEY, VALID.MATOMO_API_TOKEN]) {
    assert.ok(secrets.includes(value));
  }
});

Deno.test("with an invalid configuration every request answers 500 naming the variable, and the log says so", async () => {
  const lines: string[] = [];
  const app = createApp({ ...VALID, CLOUDPANEL_SSH_HOST_KEY: "nonsense-value-123" }, {
    logSink: (l) => void lines.push(l),
  });
  const response = await app.fetch(new Request("http://x/hosting-automator", { method: "POST", body: "{}" }));
  assert.equal(response.status, 500);
  const body = await response.json();
  assert.equal(body.error.code, "config_invalid");
  assert.match(body.error.message, /^CLOUDPANEL_SSH_HOST_KEY: /);
  assert.ok(!JSON.stringify(body).includes("nonsense-value-123"));
  assert.equal(lines.length, 1);
  assert.match(lines[0], /configuration invalid/);
  assert.ok(!lines[0].includes(KEY.split("\n")[1]), "the log line holds no secret");
});

Deno.test("the legacy service_role key stops authenticating once HOSTING_ACCEPT_SERVICE_ROLE_KEY is false", () => {
  const legacy = "eyJhbGciOiJIUzI1NiJ9.legacy.service-role";
  const both = { ...VALID, SUPABASE_SERVICE_ROLE_KEY: legacy };
  assert.deepEqual(loadConfig(both).authKeys, ["sb_secret_config_test_value", legacy]);
  const revoked = loadConfig({ ...both, HOSTING_ACCEPT_SERVICE_ROLE_KEY: "false" });
  assert.deepEqual(revoked.authKeys, ["sb_secret_config_test_value"], "only the secret key authenticates");
  assert.equal(
    refusal({
      ...VALID,
      SUPABASE_SECRET_KEYS: undefined,
      SUPABASE_SERVICE_ROLE_KEY: legacy,
      HOSTING_ACCEPT_SERVICE_ROLE_KEY: "false",
    }),
    "SUPABASE_SECRET_KEYS: is required when HOSTING_ACCEPT_SERVICE_ROLE_KEY is false: callers authenticate with it",
  );
  assert.equal(
    refusal({ ...both, HOSTING_ACCEPT_SERVICE_ROLE_KEY: "no" }),
    "HOSTING_ACCEPT_SERVICE_ROLE_KEY: must be true or false",
  );
});

Deno.test("the worker's wall clock and the lease are range-checked", () => {
  assert.equal(loadConfig({ ...VALID, HOSTING_WALL_CLOCK_SECONDS: "400" }).wallClockMs, 400_000);
  assert.equal(
    refusal({ ...VALID, HOSTING_WALL_CLOCK_SECONDS: "10" }),
    "HOSTING_WALL_CLOCK_SECONDS: must be a whole number of seconds from 30 to 86400",
  );
  assert.equal(
    refusal({ ...VALID, HOSTING_LEASE_SECONDS: "2" }),
    "HOSTING_LEASE_SECONDS: must be a whole number of seconds from 5 to 600",
  );
});
