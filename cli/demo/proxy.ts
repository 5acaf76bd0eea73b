import net from 'node:net';
import type { AddressInfo } from 'node:net';

/**
 * A loopback TCP proxy in front of the control API that the demo's agents talk to, so the demo
 * can cut the policy plane off (connections refused and reset) without stopping custody.
 */
export interface OutageSwitch {
  readonly url: string;
  /** Resets every open connection and refuses new ones until `restore`. */
  cut(): void;
  restore(): void;
  readonly down: boolean;
  /** Connections accepted so far: tells when agents have started talking to custody. */
  readonly connections: number;
  /** Requests for a token or a decision refused while cut: tool calls that met the outage. */
  readonly refusedCalls: number;
  close(): Promise<void>;
}

export async function startOutageSwitch(target: { host: string; port: number }): Promise<OutageSwitch> {
  let down = false;
  let connections = 0;
  let refusedCalls = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    connections++;
    if (down) {
      // read the request line first: a tool call's token or decision request is counted, then refused
      client.on('error', () => undefined);
      const timer = setTimeout(() => client.resetAndDestroy(), 1000);
      client.once('data', (chunk: Buffer) => {
        clearTimeout(timer);
        if (/^POST \/(v1\/check|issue|token)\b/.test(chunk.toString('latin1', 0, 64))) refusedCalls++;
        client.resetAndDestroy();
      });
      return;
    }
    const upstream = net.connect(target.port, target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    get down() {
      return down;
    },
    get connections() {
      return connections;
    },
    get refusedCalls() {
      return refusedCalls;
    },
    cut() {
      down = true;
      for (const s of sockets) s.resetAndDestroy();
    },
    restore() {
      down = false;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
