/**
 * What the CloudPanel client needs from a transport: run one command line on the server, get its output.
 * The SSH transport implements it; the demo implements it in-process against the clpctl simulator.
 */

export interface ExecResult {
  stdout: string;
  stderr: string;
  /** Null when the command ended without an exit status: killed by a signal, or the channel closed. */
  exitCode: number | null;
  /**
   * The signal that ended the command, by its name without "SIG" (`KILL`, `TERM`), as SSH's `exit-signal`
   * reports it. Absent when the command exited, and when it ended without either (the connection dropped).
   */
  signal?: string;
}

export interface RemoteShell {
  /**
   * Runs `command` (one line for the remote user's shell) with stdin closed.
   * Rejects with a HostingError: `ssh_timeout` after `timeoutMs`, `ssh_unreachable` when the connection breaks.
   */
  exec(command: string, options: { timeoutMs: number; signal?: AbortSignal }): Promise<ExecResult>;
  close(): Promise<void>;
}
