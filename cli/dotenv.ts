/**
 * Reads a `.env` file for the CLI and the local server: `NAME=value` lines, `#` comments, optional `export `,
 * single quotes (literal), double quotes (with \n escapes, and spanning lines, so a PEM key can be pasted).
 * The process environment wins over the file.
 */

const LINE_RE = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/;

export function parseDotEnv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (/^\s*(#|$)/.test(line)) continue;
    const match = LINE_RE.exec(line);
    if (!match) throw new Error(`.env line ${i + 1}: expected NAME=value`);
    const [, name, raw] = match;
    let value = raw.trim();
    if (value.startsWith('"')) {
      // A double-quoted value may continue on the following lines until its closing quote.
      let body = value.slice(1);
      while (!/(^|[^\\])"\s*$/.test(body) && i + 1 < lines.length) body += "\n" + lines[++i];
      if (!/(^|[^\\])"\s*$/.test(body)) throw new Error(`.env line ${i + 1}: ${name} has no closing quote`);
      value = body.replace(/"\s*$/, "").replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    } else if (value.startsWith("'")) {
      if (!/'\s*$/.test(value.slice(1))) throw new Error(`.env line ${i + 1}: ${name} has no closing quote`);
      value = value.slice(1).replace(/'\s*$/, "");
    } else {
      value = value.replace(/\s+#.*$/, "");
    }
    out[name] = value;
  }
  return out;
}

/** The file's variables under the process environment; a missing file is no error unless it was asked for. */
export async function loadEnv(path: string | undefined): Promise<Record<string, string>> {
  const file = path ?? ".env";
  let text = "";
  try {
    text = await Deno.readTextFile(file);
  } catch (error) {
    if (path !== undefined || !(error instanceof Deno.errors.NotFound)) {
      throw new Error(`cannot read ${file}: ${error instanceof Error ? error.message : error}`);
    }
  }
  return { ...parseDotEnv(text), ...Deno.env.toObject() };
}
