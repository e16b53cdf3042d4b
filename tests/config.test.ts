/**
 * Configuration is validated once: every bad value is reported at once, each with the variable's name and the
 * rule, never the value; each use reads only the settings it needs.
 */
import assert from "node:assert/strict";
import {
  configProblems,
  loadConfig,
  loadStoreConfig,
  secretsOf,
  sshConfigFor,
} from "../supabase/functions/hosting-automator/config.ts";
import { createApp } from "../supabase/functions/hosting-automator/app.ts";
import { isHostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { generateClientKey } from "./support/sshd.ts";

// Real keys: the configuration checks a key's type and shape.
const KEY = (await generateClientKey("ecdsa", "pem")).privateKey;
const OTHER_KEY = (await generateClientKey("rsa", "openssh")).privateKey;
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
  const other = OTHER_KEY;
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

/** An Ed25519 key in PKCS#8 PEM (ssh-keygen writes Ed25519 keys only in the OpenSSH format). */
async function ed25519Pkcs8(): Promise<string> {
  const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign"]) as CryptoKeyPair;
  const der = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  return `-----BEGIN PRIVATE KEY-----\n${btoa(String.fromCharCode(...der))}\n-----END PRIVATE KEY-----\n`;
}

/** Every problem of a refused configuration, one line each. */
function problems(read: () => unknown): string[] {
  try {
    read();
  } catch (error) {
    assert.ok(isHostingError(error) && error.code === "config_invalid", String(error));
    return configProblems(error);
  }
  throw new Error("the configuration was accepted");
}

Deno.test("every bad setting is reported in one pass, each by name and rule", () => {
  const found = problems(() =>
    loadConfig({
      ...VALID,
      CLOUDPANEL_SSH_PORT: "99999",
      CLOUDPANEL_SSH_USER: "Root User",
      CLOUDPANEL_SSH_HOST_KEY: undefined,
      MATOMO_API_TOKEN: "short",
      HOSTING_LOG_LEVEL: "loud",
      CLOUDPANEL_PUBLIC_IPS: "not-an-ip",
      SUPABASE_SECRET_KEYS: undefined,
    })
  );
  assert.deepEqual(found.map((line) => line.slice(0, line.indexOf(":"))).sort(), [
    "CLOUDPANEL_PUBLIC_IPS",
    "CLOUDPANEL_SSH_HOST_KEY",
    "CLOUDPANEL_SSH_PORT",
    "CLOUDPANEL_SSH_USER",
    "HOSTING_LOG_LEVEL",
    "MATOMO_API_TOKEN",
    "SUPABASE_SECRET_KEYS",
  ]);
  assert.ok(found.includes("CLOUDPANEL_SSH_PORT: must be a port number from 1 to 65535"));
  assert.ok(found.includes("CLOUDPANEL_SSH_HOST_KEY: is required when CLOUDPANEL_SSH_HOST is set"));
});

Deno.test("SUPABASE_DB_URL is read into its parts; a password with # @ / ? is refused with percent-encoding explained, and never echoed", () => {
  const postgres = { ...VALID, HOSTING_STORE: "postgres" };
  for (const password of ["Sup3r#Secret", "Sup3r@Secret", "Sup3r/Secret", "Sup3r?Secret", "a#b@c/d?e"]) {
    const url = `postgresql://postgres:${password}@db.example.supabase.co:5432/postgres`;
    const found = problems(() => loadConfig({ ...postgres, SUPABASE_DB_URL: url }));
    assert.equal(found.length, 1, found.join("\n"));
    assert.match(found[0], /^SUPABASE_DB_URL: the password holds characters a URL reserves \(@ \/ \? #\)/);
    assert.match(found[0], /percent-encoded: @ as %40, \/ as %2F, \? as %3F, # as %23, % as %25/);
    // Neither the password nor any piece of it between its reserved characters.
    for (const piece of [password, ...password.split(/[#@/?]/).filter((p) => p.length >= 3)]) {
      assert.ok(!found[0].includes(piece), `${found[0]} shows ${piece}`);
    }
    // Written as the rule says, it is read back exactly.
    const encoded = `postgresql://postgres:${
      encodeURIComponent(password)
    }@db.example.supabase.co:5432/postgres`;
    const store = loadStoreConfig({ HOSTING_STORE: "postgres", SUPABASE_DB_URL: encoded });
    assert.equal(store.kind, "postgres");
    assert.deepEqual(store.kind === "postgres" && store.db, {
      host: "db.example.supabase.co",
      port: 5432,
      database: "postgres",
      user: "postgres",
      password,
      sslmode: null,
    });
    const secrets = secretsOf(loadConfig({ ...postgres, SUPABASE_DB_URL: encoded }));
    assert.ok(
      secrets.includes(password) && secrets.includes(encoded),
      "the password and the URL are secrets",
    );
  }
  const cases: Array<[string, RegExp]> = [
    ["mysql://root:pw@db.example/app", /must start with postgresql:\/\/ \(or postgres:\/\/\)$/],
    ["postgresql://postgres:pw@db.example:99999/postgres", /must have a port from 1 to 65535/],
    ["postgresql://postgres:pw@db.example:0/postgres", /must have a port from 1 to 65535/],
    ["postgresql://postgres:pw@/postgres", /must name the database server's host/],
    ["postgresql://postgres:pw@bad host/postgres", /must name one host/],
    ["postgresql://postgres:pw@db.example:5432", /must end with the database's name/],
    [
      "postgresql://postgres:p%zzw@db.example/postgres",
      /the password holds a % that does not start a percent-encoded/,
    ],
    ["postgresql://postgres:pw@db.example/postgres?sslmode=sometimes", /has an sslmode other than/],
    [
      "postgresql://postgres:pw@db.example/postgres?pgbouncer=true",
      /has the parameter pgbouncer, which is not supported/,
    ],
    ["db.example:5432", /must be a URL such as postgresql:\/\/postgres:<password>@<host>:5432\/postgres$/],
  ];
  for (const [url, rule] of cases) {
    const found = problems(() => loadStoreConfig({ HOSTING_STORE: "postgres", SUPABASE_DB_URL: url }));
    assert.equal(found.length, 1);
    assert.match(found[0], new RegExp(`^SUPABASE_DB_URL: ${rule.source.replace(/^\^/, "")}`));
    assert.ok(!found[0].includes("pw@"), found[0]);
  }
  const ipv6 = loadStoreConfig({
    HOSTING_STORE: "postgres",
    SUPABASE_DB_URL: "postgres://[::1]:6543/app?sslmode=require",
  });
  assert.deepEqual(ipv6.kind === "postgres" && ipv6.db, {
    host: "::1",
    port: 6543,
    database: "app",
    user: null,
    password: null,
    sslmode: "require",
  });
  // With the rpc store, SUPABASE_DB_URL (which Supabase injects) is not read at all.
  assert.equal(loadConfig({ ...VALID, SUPABASE_DB_URL: "postgresql://x:a#b@h/d" }).store.kind, "rpc");
});

Deno.test("each use reads only the settings it needs", () => {
  const broken = {
    CLOUDPANEL_SSH_PRIVATE_KEY: "garbage",
    CLOUDPANEL_SSH_HOST: "bad host;rm",
    MATOMO_API_TOKEN: "short",
    SUPABASE_SECRET_KEYS: "{not json",
  };
  // A report with the postgres store: SUPABASE_DB_URL alone.
  const store = loadStoreConfig({
    ...broken,
    HOSTING_STORE: "postgres",
    SUPABASE_DB_URL: "postgresql://postgres:pw@127.0.0.1:5432/postgres",
  });
  assert.equal(store.kind, "postgres");
  assert.deepEqual(problems(() => loadStoreConfig({ HOSTING_STORE: "postgres" })), [
    "SUPABASE_DB_URL: is required when HOSTING_STORE is postgres",
  ]);
  // A report with the rpc store: the URL and a key to call the SQL functions with.
  assert.deepEqual(problems(() => loadStoreConfig({ ...broken, SUPABASE_SECRET_KEYS: undefined })), [
    "SUPABASE_URL: is required when HOSTING_STORE is rpc",
    "SUPABASE_SECRET_KEYS: or SUPABASE_SERVICE_ROLE_KEY is required when HOSTING_STORE is rpc: the SQL functions are called with it",
  ]);
  // A worker without callers (the CLI's runs) needs no caller key with the postgres store; the function does.
  const worker = {
    ...VALID,
    SUPABASE_SECRET_KEYS: undefined,
    HOSTING_STORE: "postgres",
    SUPABASE_DB_URL: "postgresql://postgres:pw@127.0.0.1:5432/postgres",
  };
  assert.deepEqual(loadConfig(worker, "worker").authKeys, []);
  assert.deepEqual(problems(() => loadConfig(worker)), [
    "SUPABASE_SECRET_KEYS: or SUPABASE_SERVICE_ROLE_KEY is required: callers authenticate with it",
  ]);
  assert.deepEqual(
    problems(() => loadConfig({ ...worker, ...broken }, "worker")).map((l) => l.split(":")[0]),
    [
      "CLOUDPANEL_SSH_HOST",
      "CLOUDPANEL_SSH_PRIVATE_KEY",
      "MATOMO_API_TOKEN",
    ],
    "a worker does not read SUPABASE_SECRET_KEYS",
  );
});

Deno.test("private keys are checked for type and shape when read: Ed25519, P-521, a passphrase and a garbled key are refused, naming what to use", async () => {
  const refused: Array<[string, string, RegExp]> = [
    ["Ed25519 (OpenSSH)", (await generateClientKey("ed25519", "openssh")).privateKey, /is an Ed25519 key/],
    [
      "Ed25519 (PKCS#8)",
      await ed25519Pkcs8(),
      /is an Ed25519 \(or Ed448\) key/,
    ],
    ["P-521", (await generateClientKey("ecdsa", "pem", { bits: 521 })).privateKey, /is an ECDSA P-521 key/],
    [
      "passphrase",
      (await generateClientKey("ecdsa", "openssh", { passphrase: "words" })).privateKey,
      /is protected by a passphrase/,
    ],
    [
      "garbled PEM",
      KEY.replace(/\n[^\n]{20}/, "\n!!garbled!!garbled!!"),
      /could not be read \(its body is not base64\)/,
    ],
    [
      "truncated PEM",
      KEY.split("\n").filter((_, i, all) => i === 0 || i === 1 || i >= all.length - 2).join("\n"),
      /could not be read \(its EC PRIVATE KEY body is not a DER-encoded key\)/,
    ],
  ];
  for (const [what, key, rule] of refused) {
    const found = problems(() => loadConfig({ ...VALID, CLOUDPANEL_SSH_PRIVATE_KEY: key }));
    assert.equal(found.length, 1, what);
    assert.match(found[0], /^CLOUDPANEL_SSH_PRIVATE_KEY: /, what);
    assert.match(found[0], rule, what);
    assert.match(found[0], /use an ECDSA \(P-256 or P-384\) or RSA key without a passphrase/, what);
    for (const line of key.split("\n").filter((l) => l.length >= 16 && !l.startsWith("-----"))) {
      assert.ok(!found[0].includes(line), `${what}: the key is echoed`);
    }
    const own = problems(() =>
      loadConfig({ ...VALID, CLOUDPANEL_SSH_PRIVATE_KEYS: JSON.stringify({ "cp-2": key }) })
    );
    assert.match(
      own[0],
      new RegExp(`^CLOUDPANEL_SSH_PRIVATE_KEYS: the key of server cp-2 ${rule.source}`),
      what,
    );
  }
  for (
    const [type, format] of [["ecdsa", "pem"], ["ecdsa", "openssh"], ["ecdsa", "pkcs8"], ["rsa", "pem"], [
      "rsa",
      "pkcs8",
    ]] as const
  ) {
    const key = (await generateClientKey(type, format)).privateKey;
    assert.equal(
      loadConfig({ ...VALID, CLOUDPANEL_SSH_PRIVATE_KEY: key }).fleet.sharedKey,
      key,
      `${type} ${format}`,
    );
  }
});

Deno.test("an invalid configuration answers every request with all of its problems", async () => {
  const app = createApp({ ...VALID, CLOUDPANEL_SSH_PORT: "99999", MATOMO_API_TOKEN: "short" }, {
    logSink: () => {},
  });
  assert.equal(app.config, null);
  assert.deepEqual(app.configProblems, [
    "CLOUDPANEL_SSH_PORT: must be a port number from 1 to 65535",
    "MATOMO_API_TOKEN: must be a Matomo token_auth: 16 to 128 letters and digits",
  ]);
  const response = await app.fetch(new Request("http://x/hosting-automator/status"));
  assert.equal(response.status, 500);
  assert.equal((await response.json()).error.message, app.configProblems.join("\n"));
});
