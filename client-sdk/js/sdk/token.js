// @ts-check
/**
 * @file Reading a token's claims in the browser, for display only (which market's price to
 * show, whether to show host controls). Nothing here verifies a token: the server does.
 */

/**
 * The claims Ferry reads (docs/protocol.md, "Tokens").
 * @typedef {object} TokenClaims
 * @property {string} sub user id
 * @property {string} [name]
 * @property {import('./protocol.js').Role} role
 * @property {string} room room id or pattern
 * @property {number} exp expiry, Unix seconds
 * @property {string} [lang]
 * @property {string} [market] the market the viewer buys from (`us`, `hk`, `mo`...)
 */

/**
 * Decode a JWT's payload without verifying it. Returns null for anything that is not a JWT.
 * @param {string} token
 * @returns {TokenClaims | null}
 */
export function tokenClaims(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    if (!claims || typeof claims !== 'object' || typeof claims.sub !== 'string') return null;
    return claims;
  } catch {
    return null;
  }
}
