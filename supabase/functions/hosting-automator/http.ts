/**
 * The HTTP handler: a `fetch`-style function that tests call in-process. It authenticates (http_auth.ts),
 * routes (http_routes.ts), lets the route's action answer (http_actions.ts), turns any failure into its JSON
 * error (http_response.ts) and logs one line per request.
 *
 * Every request presents a configured key, byte for byte, before anything else is looked at. Errors are
 * `{"error": {"code", "message"}}` with a safe message; details go to the log only. A refused request changes
 * nothing.
 */
import { HostingError, toHostingError } from "./errors.ts";
import { type ActionDeps, createActions } from "./http_actions.ts";
import { keyCheck } from "./http_auth.ts";
import { errorResponse, statusOf } from "./http_response.ts";
import { routeOf, ROUTES } from "./http_routes.ts";

export interface HandlerDeps extends ActionDeps {
  /** Keys a caller may present; compared in constant time. */
  authKeys: string[];
}

export type Handler = (request: Request) => Promise<Response>;

export function createHandler(deps: HandlerDeps): Handler {
  const authenticated = keyCheck(deps.authKeys);
  const actions = createActions(deps);

  async function answer(request: Request, url: URL): Promise<Response> {
    if (!await authenticated(request)) throw new HostingError("unauthorized", "no valid key presented");
    const route = routeOf(url);
    if (!route) throw new HostingError("not_found", `no route ${url.pathname}`);
    const { method } = ROUTES[route];
    if (request.method !== method) {
      return errorResponse(new HostingError("method_not_allowed", request.method), { allow: method });
    }
    return await actions[route](request, url);
  }

  return async function handle(request: Request): Promise<Response> {
    const started = performance.now();
    const url = new URL(request.url);
    let response: Response;
    try {
      response = await answer(request, url);
    } catch (error) {
      const failure = toHostingError(error);
      if (statusOf(failure) >= 500) {
        deps.logger.error("request failed", { code: failure.code, detail: failure.message });
      }
      response = errorResponse(failure);
    }
    deps.logger.info("request", {
      method: request.method,
      path: url.pathname,
      status: response.status,
      duration_ms: Math.round(performance.now() - started),
    });
    return response;
  };
}

/** Every request gets the configuration error (names the variable and the rule; no value). */
export function configErrorHandler(error: HostingError): Handler {
  return () => Promise.resolve(errorResponse(error));
}
