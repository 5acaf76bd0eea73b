import { describe, expect, it } from 'vitest';
import { IngestAuthError, createIngestAuth, verdictFor, type IngestPrincipal } from '../../../collector/ingest/auth';
import { createBindingIndex } from '../../../collector/ingest/bindings';
import type { TokenClaims } from '../../../identity/claims';

// What an OTLP credential proves about the spans it carries: pure checks, without a socket.

function index() {
  const b = createBindingIndex();
  // alice's registered agent agt_a issued a token to root-a; root-a's token was exchanged for
  // sub-a, sub-a's for sub-sub-a; bob's agent agt_b has root-b
  b.learn('root-a', { sponsor: 'alice', parent: '', agentId: 'agt_a' });
  b.learn('sub-a', { sponsor: 'alice', parent: 'root-a', agentId: '' });
  b.learn('sub-sub-a', { sponsor: 'alice', parent: 'sub-a', agentId: '' });
  b.learn('root-b', { sponsor: 'bob', parent: '', agentId: 'agt_b' });
  return b;
}

const id = (sponsor: string, instance: string, parent = '') => ({ sponsor, instance, parent });

describe('verdictFor', () => {
  const b = index();

  it('a custody token proves its sponsor, its instance and that instance\'s sub-agents', () => {
    const p: IngestPrincipal = { kind: 'token', sponsor: 'alice', instance: 'root-a', agentId: '' };
    expect(verdictFor(p, id('alice', 'root-a'), b).trust).toBe('verified');
    expect(verdictFor(p, id('alice', 'sub-a', 'root-a'), b).trust).toBe('verified');
    expect(verdictFor(p, id('alice', 'sub-sub-a', 'sub-a'), b).trust).toBe('verified');
    // a direct sub-agent not (yet) known to the index: its parent is the token's instance
    expect(verdictFor(p, id('alice', 'fresh-child', 'root-a'), b).trust).toBe('verified');
    expect(verdictFor(p, id('bob', 'root-a'), b)).toEqual({ trust: 'unverified', reason: 'identity_mismatch' });
    expect(verdictFor(p, id('alice', 'root-b'), b).reason).toBe('identity_mismatch');
    expect(verdictFor(p, id('alice', 'never-issued'), b).reason).toBe('identity_mismatch');
    // a sub-agent's token does not prove its parent
    const sub: IngestPrincipal = { kind: 'token', sponsor: 'alice', instance: 'sub-a', agentId: '' };
    expect(verdictFor(sub, id('alice', 'root-a'), b).reason).toBe('identity_mismatch');
    expect(verdictFor(sub, id('alice', 'sub-sub-a', 'sub-a'), b).trust).toBe('verified');
  });

  it('an agent credential proves the instances bound under its registration, sub-agents included', () => {
    const p: IngestPrincipal = { kind: 'agent', sponsor: 'alice', agentId: 'agt_a' };
    expect(verdictFor(p, id('alice', 'root-a'), b).trust).toBe('verified');
    expect(verdictFor(p, id('alice', 'sub-sub-a', 'sub-a'), b).trust).toBe('verified');
    expect(verdictFor(p, id('alice', 'root-b'), b).reason).toBe('identity_mismatch');
    // claiming a parent does not make an unknown instance one's own
    expect(verdictFor(p, id('alice', 'made-up', 'root-a'), b).reason).toBe('identity_mismatch');
    const bob: IngestPrincipal = { kind: 'agent', sponsor: 'bob', agentId: 'agt_b' };
    expect(verdictFor(bob, id('bob', 'root-b'), b).trust).toBe('verified');
    expect(verdictFor(bob, id('bob', 'sub-a', 'root-a'), b).reason).toBe('identity_mismatch');
    expect(verdictFor(bob, id('alice', 'root-b'), b).reason).toBe('identity_mismatch');
    // a span claiming nobody is simply the sender's
    expect(verdictFor(bob, id('', ''), b).trust).toBe('verified');
  });

  it('service, gateway and anonymous senders get one trust for every span', () => {
    expect(verdictFor({ kind: 'service' }, id('x', 'y'), b).trust).toBe('service');
    expect(verdictFor({ kind: 'gateway' }, id('x', 'y'), b).trust).toBe('gateway');
    expect(verdictFor({ kind: 'anonymous', reason: 'no_credential' }, id('alice', 'root-a'), b)).toEqual({ trust: 'unverified', reason: 'no_credential' });
  });
});

describe('createIngestAuth', () => {
  const credentials = { service: 'svc-secret', ingest: 'gw-secret', rollout: 'rol-secret' };
  const agents = {
    authenticate(c: string) {
      if (c !== 'cag.agt_a.s3cret') throw new Error('not valid');
      return { agent_id: 'agt_a', sponsor_id: 'alice' };
    },
  };
  let verified = 0;
  const verifyToken = () => async (t: string): Promise<TokenClaims> => {
    verified++;
    if (t !== 'aaa.bbb.ccc') throw new Error('bad signature');
    return { sponsor_id: 'alice', agent_instance_id: 'root-a' } as TokenClaims;
  };

  it('registered: no credential, a malformed one, or one that proves nothing is refused', async () => {
    const auth = createIngestAuth({ credentials, required: true, agents: () => agents, verifyToken });
    await expect(auth.authenticate(undefined)).rejects.toBeInstanceOf(IngestAuthError);
    await expect(auth.authenticate('Basic abc')).rejects.toBeInstanceOf(IngestAuthError);
    await expect(auth.authenticate('Bearer x.y.z')).rejects.toBeInstanceOf(IngestAuthError);
    await expect(auth.authenticate('Bearer cag.agt_a.wrong')).rejects.toBeInstanceOf(IngestAuthError);
    // an operator's rollout credential is not an ingest credential
    await expect(auth.authenticate('Bearer rol-secret')).rejects.toBeInstanceOf(IngestAuthError);
    expect(await auth.authenticate('Bearer svc-secret')).toEqual({ kind: 'service' });
    expect(await auth.authenticate('bearer gw-secret')).toEqual({ kind: 'gateway' });
    expect(await auth.authenticate('Bearer cag.agt_a.s3cret')).toEqual({ kind: 'agent', sponsor: 'alice', agentId: 'agt_a' });
    expect(await auth.authenticate('BEARER aaa.bbb.ccc')).toEqual({ kind: 'token', sponsor: 'alice', instance: 'root-a', agentId: '' });
  });

  it('open: what proves nothing is anonymous; answers are cached per credential', async () => {
    const auth = createIngestAuth({ credentials: {}, required: false, verifyToken });
    expect(await auth.authenticate(undefined)).toEqual({ kind: 'anonymous', reason: 'no_credential' });
    expect(await auth.authenticate('Bearer x.y.z')).toEqual({ kind: 'anonymous', reason: 'invalid_credential' });
    // no registry in this process: an agent credential proves nothing here
    expect(await auth.authenticate('Bearer cag.agt_a.s3cret')).toEqual({ kind: 'anonymous', reason: 'invalid_credential' });
    const before = verified;
    for (let i = 0; i < 5; i++) expect((await auth.authenticate('Bearer aaa.bbb.ccc')).kind).toBe('token');
    expect(verified - before).toBe(1);
  });
});
