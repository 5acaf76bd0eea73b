import { JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT } from '../../enforcer/tokens/exchange';

/** The seed article's token-service-config.yml values, with custody's role maxima. */
export const SEED = {
  issuer: 'agent-token-svc',
  default_ttl_seconds: 300,
  max_ttl_seconds: 900,
  require_sponsor: true,
  supported_tools: ['billing', 'search', 'file-store'],
  roles: { user: { max_ttl_seconds: 60 }, support: { max_ttl_seconds: 300 }, admin: { max_ttl_seconds: 900 } },
  delegation: { max_depth: 3 },
};

/** The fixed RFC 8693 parameters of an exchange. */
export const EXCHANGE = { grant_type: TOKEN_EXCHANGE_GRANT, subject_token_type: JWT_TOKEN_TYPE };
