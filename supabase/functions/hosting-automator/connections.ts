/**
 * An invocation's SSH connections: one per server, opened at the first step that needs it and shared by the
 * jobs on that server. A connection that could not be opened is not kept, nor is one that broke.
 */
import type { ServerAddress } from "./config.ts";
import type { RemoteShell } from "./remote.ts";

/** A server as a job knows it: where to connect, and whether its circuit had failures. */
export type Server = ServerAddress & { failures: number };

export class Connections {
  readonly #connect: (server: ServerAddress) => Promise<RemoteShell>;
  readonly #answered: (name: string) => Promise<void>;
  readonly #shells = new Map<string, Promise<RemoteShell>>();

  /** `answered`: a server with failures answered again (its circuit closes; a best effort). */
  constructor(
    connect: (server: ServerAddress) => Promise<RemoteShell>,
    answered: (name: string) => Promise<void>,
  ) {
    this.#connect = connect;
    this.#answered = answered;
  }

  /** The server's connection, opened now if there is none. */
  shell(server: Server): Promise<RemoteShell> {
    let shell = this.#shells.get(server.name);
    if (!shell) {
      shell = this.#open(server);
      this.#shells.set(server.name, shell);
    }
    return shell;
  }

  /** Forgets a server's connection that broke, so the next job on it connects again. */
  drop(name: string): void {
    const shell = this.#shells.get(name);
    this.#shells.delete(name);
    shell?.then((s) => s.close(), () => {}).catch(() => {});
  }

  async close(): Promise<void> {
    const shells = [...this.#shells.values()];
    this.#shells.clear();
    for (const shell of shells) await (await shell.catch(() => null))?.close().catch(() => {});
  }

  async #open(server: Server): Promise<RemoteShell> {
    let shell: RemoteShell;
    try {
      shell = await this.#connect(server);
    } catch (error) {
      // Not kept: the next job on this server (once its circuit closes) connects again.
      this.#shells.delete(server.name);
      throw error;
    }
    if (server.failures > 0) await this.#answered(server.name).catch(() => {});
    return shell;
  }
}
