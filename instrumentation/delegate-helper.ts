import { performDelegation, type DelegationRequest } from './delegation';

/**
 * Run as a script by delegationTokenSync: reads one DelegationRequest as JSON on stdin, writes
 * `{token, expiresAt}` or `{error}` on stdout.
 */
async function main(): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  try {
    const request = JSON.parse(Buffer.concat(chunks).toString('utf8')) as DelegationRequest;
    const got = await performDelegation(request);
    process.stdout.write(JSON.stringify({ token: got.token, expiresAt: got.expiresAt }));
  } catch (err) {
    process.stdout.write(JSON.stringify({ error: (err as Error).message }));
  }
}

if (require.main === module) void main();
