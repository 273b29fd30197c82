/**
 * Requests to the AEVis backend routes, relative to the iframe's base URL
 * (TensorBoard sets `<base href="plugin/aevis/">`, so `runs` is /data/plugin/aevis/runs).
 */

import { parseRangeHeader } from "./scales";

/** A backend answer with an error status; `message` is the backend's own `error` text. */
export class ApiError extends Error {
  constructor(
    readonly route: string,
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export type Params = Record<string, string | number | undefined>;

export function routeUrl(route: string, params: Params = {}): string {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== undefined) query.set(key, String(value));
  const text = query.toString();
  return text ? `${route}?${text}` : route;
}

async function errorFrom(route: string, response: Response): Promise<ApiError> {
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.text();
    try {
      const parsed = JSON.parse(body);
      if (parsed && typeof parsed.error === "string") message = parsed.error;
      else if (body) message = body.slice(0, 500);
    } catch {
      if (body) message = body.slice(0, 500);
    }
  } catch {
    // keep the status line
  }
  return new ApiError(route, response.status, message);
}

async function request(route: string, url: string, init: RequestInit = {}): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(url, { credentials: "same-origin", ...init });
  } catch (err) {
    throw new ApiError(route, 0, `TensorBoard did not answer (${String(err)}); is it still running?`);
  }
  if (!response.ok) throw await errorFrom(route, response);
  return response;
}

export async function getJson<T>(route: string, params: Params = {}): Promise<T> {
  const response = await request(route, routeUrl(route, params));
  try {
    return (await response.json()) as T;
  } catch {
    throw new ApiError(route, response.status, `the ${route} route answered something that is not JSON`);
  }
}

/** POST a JSON body to `route` and parse the JSON answer. */
export async function postJson<T>(route: string, body: unknown): Promise<T> {
  const response = await request(route, route, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  try {
    return (await response.json()) as T;
  } catch {
    throw new ApiError(route, response.status, `the ${route} route answered something that is not JSON`);
  }
}

export interface RangedImage {
  bitmap: ImageBitmap;
  /** Value range of the grey levels (`X-AEVis-Range`), or null when the backend sent none. */
  range: [number, number] | null;
}

/** A PNG route (e.g. an activation map) decoded, with its value range header. */
export async function getRangedImage(url: string): Promise<RangedImage> {
  const response = await request(url.split("?")[0], url);
  const range = parseRangeHeader(response.headers.get("X-AEVis-Range"));
  const bitmap = await createImageBitmap(await response.blob());
  return { bitmap, range };
}
