/**
 * Terminal output shared by the CLI and the demo: live progress lines for jobs and steps, and plain tables.
 * Pure formatting; callers decide where lines go.
 */
import type { Progress } from "../supabase/functions/hosting-automator/workflow.ts";
import type { StatusReport, StepName } from "../supabase/functions/hosting-automator/store.ts";

export interface Style {
  ok(text: string): string;
  bad(text: string): string;
  warn(text: string): string;
  dim(text: string): string;
}

const plain: Style = { ok: (t) => t, bad: (t) => t, warn: (t) => t, dim: (t) => t };
const ansi: Style = {
  ok: (t) => `\x1b[32m${t}\x1b[0m`,
  bad: (t) => `\x1b[31m${t}\x1b[0m`,
  warn: (t) => `\x1b[33m${t}\x1b[0m`,
  dim: (t) => `\x1b[2m${t}\x1b[0m`,
};

/** Colours only on a terminal, and never when NO_COLOR is set. */
export function styleFor(stream: { isTerminal(): boolean }): Style {
  return stream.isTerminal() && !Deno.env.get("NO_COLOR") ? ansi : plain;
}

export const STEP_LABEL: Record<StepName, string> = {
  cloudpanel_site: "CloudPanel site",
  dns_check: "DNS check",
  ssl_certificate: "Let's Encrypt certificate",
  https_verify: "HTTPS check",
  matomo_site: "Matomo site",
  cloudpanel_site_delete: "CloudPanel site removal",
  matomo_site_delete: "Matomo site removal",
};

/** A job that ended well: a site built (`active`) or taken down (`removed`). */
const GOOD = new Set(["active", "removed"]);

function pad(text: string, width: number): string {
  return text.length >= width ? text : text + " ".repeat(width - text.length);
}

type Finished = Extract<Progress, { kind: "job_finished" }>;

/** What a finished job's line says after its status. */
function finishedDetail(o: Finished["outcome"], job: Finished["job"]): string {
  switch (o.status) {
    case "active":
      return `${o.doc_root}${o.matomo_site_id ? `, Matomo ${o.matomo_site_id}` : ""}`;
    case "retrying":
      return `retry at ${o.next_run_at}: ${o.error?.message ?? ""}`;
    case "waiting":
      // Its server could not be reached: the job waits for that server's circuit to close, attempt kept.
      return `for server ${job.server.name} (${o.error?.code ?? "unreachable"}), attempt kept: ${
        o.error?.message ?? ""
      }`;
    default:
      return o.error?.message ?? "";
  }
}

/** One line per event, as it happens. */
export function progressLines(
  write: (line: string) => void,
  style: Style = plain,
): (event: Progress) => void {
  return (event) => {
    const domain = pad(event.job.domain ?? "(no domain)", 28);
    switch (event.kind) {
      case "job_started":
        write(
          `${style.dim("▶")} ${domain} attempt ${event.job.attempt} of ${event.job.maxAttempts}, ` +
            `server ${event.job.server.name}`,
        );
        break;
      case "step_started":
        write(`  ${style.dim("…")} ${domain} ${STEP_LABEL[event.step]}`);
        break;
      case "step_finished": {
        const o = event.outcome;
        const label = pad(STEP_LABEL[o.step], 26);
        if (o.status === "failed") {
          write(`  ${style.bad("✗")} ${domain} ${label} ${o.code}: ${o.message ?? ""}`);
        } else write(`  ${style.ok("✓")} ${domain} ${label} ${o.duration_ms} ms`);
        break;
      }
      case "job_finished": {
        const o = event.outcome;
        const detail = finishedDetail(o, event.job);
        const mark = GOOD.has(o.status)
          ? style.ok("■")
          : o.status === "failed"
          ? style.bad("■")
          : style.warn("■");
        const line = `${mark} ${domain} ${pad(o.status, 10)} ${detail}`;
        write(o.warning ? `${line}${style.warn(` (${o.warning.message})`)}` : line.trimEnd());
        break;
      }
    }
  };
}

/**
 * The width output must fit: COLUMNS when set (also when output is piped), else the terminal's; null (no limit)
 * for a pipe or a file without COLUMNS, so that nothing is cut where it would be searched.
 */
export function outputWidth(
  stream: { isTerminal(): boolean },
  columns: string | undefined = Deno.env.get("COLUMNS"),
): number | null {
  const given = Number(columns);
  if (columns !== undefined && Number.isInteger(given) && given > 0) return Math.max(given, 40);
  if (!stream.isTerminal()) return null;
  try {
    return Math.max(Deno.consoleSize().columns, 40);
  } catch {
    return null;
  }
}

/** Text broken into lines of at most `width` characters, at spaces where it can be; long words are split. */
export function wrapText(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/ +/)) {
    let rest = word;
    while (rest.length > 0) {
      const room = line === "" ? width : width - line.length - 1;
      if (rest.length <= room) {
        line = line === "" ? rest : `${line} ${rest}`;
        rest = "";
      } else if (line !== "") {
        lines.push(line);
        line = "";
      } else {
        lines.push(rest.slice(0, width));
        rest = rest.slice(width);
      }
    }
  }
  if (line !== "" || lines.length === 0) lines.push(line);
  return lines;
}

/** A paragraph fitted to `width` (null: as it is); its continuation lines indented by `indent` spaces. */
export function fitParagraph(text: string, width: number | null, indent = 2): string {
  if (width === null || text.length <= width) return text;
  const lead = /^ */.exec(text)![0].length;
  const [first, ...rest] = wrapText(text.slice(lead), width - lead);
  const hang = " ".repeat(lead + indent);
  const more = rest.join(" ");
  return [
    " ".repeat(lead) + first,
    ...(more ? wrapText(more, width - lead - indent).map((l) => hang + l) : []),
  ]
    .join("\n");
}

/**
 * A plain table with a header row and a rule. Cells are cut to `maxWidth`; with a `width`, the widest columns
 * are narrowed until the table fits it, their cells wrapping onto more lines (a table too wide even so is
 * printed as a block per row).
 */
export function table(
  headers: string[],
  rows: Array<Array<string | number | null | undefined>>,
  maxWidth = 60,
  width: number | null = null,
): string {
  const cells = rows.map((row) =>
    row.map((c) => (c === null || c === undefined || c === "" ? "–" : String(c)))
  );
  const cut = (text: string) => (text.length > maxWidth ? `${text.slice(0, maxWidth - 1)}…` : text);
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((row) => cut(row[i] ?? "").length)));
  if (width !== null) {
    // Narrowed widest first, down to each column's longest word, so that words stay whole. A table that still
    // does not fit is printed as one block per row instead, a line per column.
    const word = headers.map((h, i) =>
      Math.max(
        h.length,
        ...cells.map((row) => Math.max(...cut(row[i] ?? "").split(" ").map((w) => w.length))),
      )
    );
    const total = () => widths.reduce((a, b) => a + b, 0) + 2 * (widths.length - 1);
    while (total() > width) {
      let widest = -1;
      for (let i = 0; i < widths.length; i++) {
        if (widths[i] > word[i] && (widest < 0 || widths[i] > widths[widest])) widest = i;
      }
      if (widest < 0) return records(headers, cells.map((row) => row.map(cut)), width);
      widths[widest]--;
    }
  }
  const lines = (row: string[]) => {
    const wrapped = row.map((c, i) => (width === null ? [cut(c)] : wrapText(cut(c), widths[i])));
    const height = Math.max(...wrapped.map((w) => w.length));
    return Array.from(
      { length: height },
      (_, n) => wrapped.map((w, i) => pad(w[n] ?? "", widths[i])).join("  ").trimEnd(),
    );
  };
  return [...lines(headers), widths.map((w) => "─".repeat(w)).join("  "), ...cells.flatMap(lines)].join("\n");
}

/** Rows as blocks: the first cell, then each other column on its own line, its value wrapped to `width`. */
function records(headers: string[], rows: string[][], width: number): string {
  const label = Math.max(...headers.slice(1).map((h) => h.length));
  const room = Math.max(width - label - 4, 16);
  return rows.flatMap((row) => [
    row[0],
    ...headers.slice(1).flatMap((header, i) =>
      wrapText(row[i + 1] ?? "", room).map((text, n) =>
        `  ${pad(n === 0 ? header : "", label)}  ${text}`.trimEnd()
      )
    ),
  ]).join("\n");
}

type ServerStatus = StatusReport["servers"][number];

/** A timestamp from the database as UTC to the second (`2026-11-29T21:52:22Z`); unparseable text as it is. */
export function utcSeconds(at: string | null | undefined): string {
  if (!at) return "";
  const date = new Date(at);
  return Number.isNaN(date.getTime()) ? at : `${date.toISOString().slice(0, 19)}Z`;
}

/** A server's circuit in words: closed, open until when, or half-open (its next job tries it). */
export function circuitText(circuit: ServerStatus["circuit"]): string {
  const failures = `${circuit.failures} failure${circuit.failures === 1 ? "" : "s"}`;
  switch (circuit.state) {
    case "closed":
      return "closed";
    case "open":
      return `open until ${utcSeconds(circuit.open_until)} (${failures})`;
    case "half_open":
      return `half-open (${failures}; the next job tries it)`;
  }
}

/** The last connection error a server had (kept after its circuit closed), with when. */
export function lastErrorText(circuit: ServerStatus["circuit"]): string {
  if (!circuit.last_error_code) return "";
  const message = circuit.last_error && circuit.last_error !== circuit.last_error_code
    ? `: ${circuit.last_error}`
    : "";
  return `${utcSeconds(circuit.last_error_at)} ${circuit.last_error_code}${message}`.trim();
}

/**
 * Every server of `/status` as a table: state, sites placed of capacity, jobs running of concurrency, circuit.
 * Cells are cut to `maxWidth`; the default keeps a last error's sentence whole.
 */
export function serverTable(
  servers: StatusReport["servers"],
  maxWidth = 120,
  width: number | null = null,
): string {
  return table(
    ["server", "host", "state", "sites", "running", "failed 1 d", "circuit", "last error"],
    servers.map((s) => [
      s.name,
      s.port === 22 ? s.host : `${s.host.includes(":") ? `[${s.host}]` : s.host}:${s.port}`,
      s.state,
      `${s.placed}/${s.capacity ?? "no limit"}`,
      `${s.running}/${s.concurrency}`,
      s.failed_last_day,
      circuitText(s.circuit),
      lastErrorText(s.circuit),
    ]),
    maxWidth,
    width,
  );
}
