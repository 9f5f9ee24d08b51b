// The public API, as a customer would call it: /api/... beside /console/ (behind any
// stage prefix), with the signed-in user's bearer token.
import { token, signOut } from './auth.js';

export const API_BASE = new URL('../api', document.baseURI).pathname;

export class ApiError extends Error {
  constructor(status, code, message, fields) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields || {};
  }
}

/** Calls the API; resolves to the parsed JSON body (null for 204), or throws an ApiError. */
export async function api(path, { method = 'GET', body, headers = {}, query } = {}) {
  const url = new URL(API_BASE + path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  }
  const init = { method, headers: { Accept: 'application/json', ...headers } };
  const bearer = token();
  if (bearer) init.headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, 'network', `The API could not be reached (${err.message}).`);
  }
  if (response.status === 204) return null;
  let data = null;
  const text = await response.text();
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (response.ok) return data;
  const error = data?.error || {};
  const message = error.message || `The API answered ${response.status} ${response.statusText}.`;
  if (response.status === 401) {
    signOut(`You were signed out: ${message}. Sign in again.`);
  }
  throw new ApiError(response.status, error.code || 'http_error', message, error.fields);
}

/** Every page of a paged list (`items` + `nextCursor`), up to `max` items. */
export async function allPages(path, query = {}, max = 1000) {
  const items = [];
  let cursor;
  do {
    const page = await api(path, { query: { ...query, cursor } });
    items.push(...(page.items || page.steps || []));
    cursor = page.nextCursor;
  } while (cursor && items.length < max);
  return items;
}
