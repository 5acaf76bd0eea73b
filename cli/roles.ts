import { startCollectorRole } from '../collector/role';
import { startPolicyPlaneRole } from '../enforcer/plane/role';
import { startRollbackRole } from '../enforcer/rollback/role';
import { startTokenServiceRole } from '../identity/role';
import type { RoleStarter } from './host';

/**
 * The roles `custody up` hosts, in start order: the collector first, so that the roles that
 * report to it find it listening.
 */
export const ROLES: Record<string, RoleStarter> = {
  collector: startCollectorRole,
  'token-service': startTokenServiceRole,
  // after the token service: the plane verifies tokens with its in-process keys
  'policy-plane': startPolicyPlaneRole,
  // last: it reads the rules and moves the rollout through the roles above
  rollback: startRollbackRole,
};
