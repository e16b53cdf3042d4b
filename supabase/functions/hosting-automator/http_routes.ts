/**
 * The routes: each path below the function's name and the one method it answers. Any other path is a 404,
 * any other method a 405 that names the allowed one.
 *
 *   POST /               {"site_id": …} | Database Webhook payload | {} (drain)
 *   GET  /status         the operator's report
 *   POST /retry          {"site_id": …} | {"all_failed": true}
 *   POST /remove         {"site_id": …}
 */
export const ROUTES = {
  kick: { path: "", method: "POST" },
  status: { path: "/status", method: "GET" },
  retry: { path: "/retry", method: "POST" },
  remove: { path: "/remove", method: "POST" },
} as const;

export type RouteName = keyof typeof ROUTES;

const NAMES = Object.keys(ROUTES) as RouteName[];

/**
 * The route of a path: Supabase passes `/hosting-automator/...`; a local server may pass
 * `/functions/v1/hosting-automator/...` or `/...`.
 */
export function routeOf(url: URL): RouteName | null {
  const path = url.pathname.replace(/\/+$/, "").replace(/^\/functions\/v1/, "").replace(
    /^\/hosting-automator/,
    "",
  );
  return NAMES.find((name) => ROUTES[name].path === path) ?? null;
}
