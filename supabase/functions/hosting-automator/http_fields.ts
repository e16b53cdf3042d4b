/** Header field values (RFC 9110), as the body reader and the key check both read them. */

/** Optional white space is SP and HTAB only; any other character, Unicode white space too, is the value's. */
export function withoutOws(value: string): string {
  return value.replace(/^[ \t]+|[ \t]+$/g, "");
}
