/**
 * Test support: the parts of a Markdown document the documentation tests read: fenced code blocks (with their
 * language and first line), the section under a heading, and shell command lines.
 */

export interface CodeBlock {
  /** The fence's info string: `sh`, `sql`, `ts`, or "" for none. */
  lang: string;
  text: string;
  /** 1-based line of the opening fence. */
  line: number;
}

export function codeBlocks(markdown: string): CodeBlock[] {
  const blocks: CodeBlock[] = [];
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)\s*$/.exec(lines[i]);
    if (!open) continue;
    const start = i;
    const body: string[] = [];
    while (++i < lines.length && !/^```\s*$/.test(lines[i])) body.push(lines[i]);
    blocks.push({ lang: open[1], text: body.join("\n"), line: start + 1 });
  }
  return blocks;
}

/** The text from the heading that starts with `heading` up to the next heading of the same or a higher level. */
export function section(markdown: string, heading: string): string {
  const lines = markdown.split("\n");
  const start = lines.findIndex((l) => l.startsWith(heading));
  if (start < 0) throw new Error(`no heading "${heading}"`);
  const level = /^#+/.exec(lines[start])![0].length;
  let end = start + 1;
  let inCode = false;
  for (; end < lines.length; end++) {
    if (lines[end].startsWith("```")) inCode = !inCode;
    const h = !inCode && /^(#+) /.exec(lines[end]);
    if (h && h[1].length <= level) break;
  }
  return lines.slice(start, end).join("\n");
}

/** Shell lines of a block, continuation lines (a trailing backslash) joined. */
export function shellLines(text: string): string[] {
  return text.replace(/\\\n\s*/g, " ").split("\n");
}

/**
 * Splits a shell line into words the way the shell would for our purposes: quotes group, `#` outside quotes
 * starts a comment, and `;`, `&&`, `||`, `|` end a command (returned as their own words).
 */
export function shellWords(line: string): string[] {
  const words: string[] = [];
  let word = "";
  let quote: string | null = null;
  let started = false;
  const flush = () => {
    if (started) words.push(word);
    word = "";
    started = false;
  };
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === quote) quote = null;
      else word += c;
      continue;
    }
    if (c === "'" || c === '"') {
      quote = c;
      started = true;
    } else if (c === "#" && !started) {
      break;
    } else if (/\s/.test(c)) {
      flush();
    } else if (c === ";" || c === "|" || (c === "&" && line[i + 1] === "&")) {
      flush();
      const op = line.slice(i, i + 2) === "&&" || line.slice(i, i + 2) === "||" ? line.slice(i, i + 2) : c;
      words.push(op);
      i += op.length - 1;
    } else {
      word += c;
      started = true;
    }
  }
  flush();
  return words;
}
