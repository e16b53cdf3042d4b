/**
 * The names a site's certificate covers, and the registered domain it counts against, from the Public Suffix
 * List. The list is compiled into the `tldts` package, so nothing is downloaded at run time; a new list comes
 * with a new version of the package. Imported by its full specifier, pinned, rather than through an import map:
 * the clpctl simulator imports this module and runs without the project's configuration (`--no-config`).
 *
 * Both sections of the list count, ICANN's and the private one: Let's Encrypt counts its certificates per
 * registered domain over the whole list (each `user.github.io` has its own limit), and CloudPanel tells an apex
 * from a sub-domain with the list too. A name under a top-level domain the list does not know (`.test`,
 * `.example`) takes the list's default rule `*`: its last label is the suffix.
 *
 * Used by the function's DNS check, the clpctl simulator and the demo alike, so they cannot disagree.
 */
import { getDomain } from "npm:tldts@7.6.4";

const PSL = { allowPrivateDomains: true, extractHostname: false } as const;

/**
 * The registered domain (eTLD+1): `example.co.uk` for `a.b.example.co.uk`. A name that is itself a public
 * suffix (`co.uk`, `github.io`) has none below it and counts as its own, as Let's Encrypt counts it.
 * Expects a canonical domain: lower-case ASCII, IDN as punycode, no trailing dot.
 */
export function registeredDomain(domain: string): string {
  return getDomain(domain, PSL) ?? domain;
}

/**
 * The names the certificate covers. CloudPanel's documentation says a certificate for `domain.com` also covers
 * `www.domain.com`, and the other way round; whether its CLI does the same is not confirmed, so both must point
 * at the server. A registered domain (`example.com`, `shop.co.uk`) or its `www.` name gets both, registered
 * domain first; any other sub-domain (`blog.example.com`, `www.blog.example.com`) is certified alone.
 */
export function certificateNames(domain: string): string[] {
  const registered = getDomain(domain, PSL);
  if (registered === null) return [domain];
  if (domain === registered || domain === `www.${registered}`) return [registered, `www.${registered}`];
  return [domain];
}
