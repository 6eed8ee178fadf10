// The benchmark peer (services/bench/peer.py starts it): panva's oidc-provider in one process, serving
//   POST /token                client credentials; resource=urn:bench:rs256 (the default) or urn:bench:es256 give
//                              a JWT signed with that algorithm, resource=urn:bench:opaque an opaque token
//   POST /token/introspection  RFC 7662, for the opaque tokens (JWT access tokens are never stored)
// with the client id and secret given on the command line (client_secret_basic), scope "api".
// Tokens live in a Map (see MemoryAdapter), so a pool of thousands stays live as it does in minidoor's PostgreSQL.
//
//   node server.js PORT CLIENT_ID CLIENT_SECRET
import { generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

const [port, clientId, clientSecret] = process.argv.slice(2);

const RESOURCES = {
  'urn:bench:rs256': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
  'urn:bench:es256': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } },
  'urn:bench:opaque': { accessTokenFormat: 'opaque' },
};

// The development adapter bundled with oidc-provider is an LRU of about 1,000 entries per kind, which would evict
// part of the introspection pool; this one keeps every entry until it expires.
const store = new Map();

class MemoryAdapter {
  constructor(name) {
    this.name = name;
  }

  key(id) {
    return `${this.name}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    store.set(this.key(id), { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return entry.payload;
  }

  async findByUid() {
    return undefined;
  }

  async findByUserCode() {
    return undefined;
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId() {}
}

function signingKey(type, options, alg) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid: `bench-${alg.toLowerCase()}`, alg, use: 'sig' };
}

const provider = new Provider(`http://127.0.0.1:${port}`, {
  adapter: MemoryAdapter,
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'api',
    },
  ],
  cookies: { keys: [randomBytes(32).toString('hex')] },
  jwks: {
    keys: [
      signingKey('rsa', { modulusLength: 2048 }, 'RS256'),
      signingKey('ec', { namedCurve: 'P-256' }, 'ES256'),
    ],
  },
  scopes: ['api'],
  ttl: { ClientCredentials: 3600 },
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    introspection: {
      enabled: true,
      // The library's default, written out so production mode does not warn about it.
      allowedPolicy: async (ctx, client, token) => client.clientAuthMethod !== 'none' || token.clientId === client.clientId,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf ?? 'urn:bench:rs256',
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource) => {
        if (!(resource in RESOURCES)) throw new errors.InvalidTarget();
        return { scope: 'api', accessTokenTTL: 3600, ...RESOURCES[resource] };
      },
    },
  },
});

provider.listen(Number(port), '127.0.0.1', () => {
  process.stdout.write(`listening on ${port}\n`);
});
