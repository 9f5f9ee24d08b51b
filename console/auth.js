// Who is signed in. Locally: a token pasted from `make token`. On AWS: the Cognito hosted
// UI, authorization code with PKCE. The token lives in sessionStorage (this tab only,
// gone when it closes) and never in a URL.

const TOKEN_KEY = 'taskflow.token';
const PKCE_KEY = 'taskflow.pkce';
const MESSAGE_KEY = 'taskflow.signin-message';

let config = { auth: 'token' };

/** Reads config.json (served beside the files): which sign-in this deployment uses. */
export async function loadConfig() {
  try {
    const response = await fetch(new URL('config.json', document.baseURI), { cache: 'no-cache' });
    if (response.ok) config = await response.json();
  } catch {
    // Without it the console falls back to pasting a token.
  }
  return config;
}

export function authMode() {
  return config.auth === 'cognito' ? 'cognito' : 'token';
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** The token's claims (not verified here: the API does that on every call). */
export function claims(raw = token()) {
  if (!raw) return null;
  const parts = raw.split('.');
  if (parts.length !== 3) return null;
  try {
    const text = atob(parts[1].replace(/-/g, '+').replace(/_/g, '/'));
    const bytes = Uint8Array.from(text, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

export function user() {
  const c = claims();
  if (!c) return null;
  return {
    id: c.sub,
    agency: c['custom:agencyId'],
    role: c['custom:role'],
    name: c.email || c['cognito:username'] || c.sub,
    expires: c.exp ? new Date(c.exp * 1000) : null,
  };
}

/** Keeps a pasted token after checking it looks like one; returns an error text or null. */
export function signInWithToken(raw) {
  const value = (raw || '').trim().replace(/^Bearer\s+/i, '');
  const c = claims(value);
  if (!c) return 'That is not a token: paste the whole output of make token (three parts separated by dots).';
  if (!c['custom:agencyId'] || !c['custom:role']) return 'The token has no agency or role claim.';
  if (c.exp && c.exp * 1000 < Date.now()) return 'The token has expired: make a new one with make token.';
  sessionStorage.setItem(TOKEN_KEY, value);
  sessionStorage.removeItem(MESSAGE_KEY);
  return null;
}

/** Forgets the token; `message` is shown on the sign-in page. */
export function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (message) sessionStorage.setItem(MESSAGE_KEY, message);
  else sessionStorage.removeItem(MESSAGE_KEY);
  if (authMode() === 'cognito' && !message) {
    const url = new URL(`https://${config.domain}/logout`);
    url.searchParams.set('client_id', config.clientId);
    url.searchParams.set('logout_uri', new URL('./', document.baseURI).href);
    location.assign(url);
    return;
  }
  window.dispatchEvent(new Event('taskflow:signed-out'));
}

export function takeSignInMessage() {
  const message = sessionStorage.getItem(MESSAGE_KEY);
  sessionStorage.removeItem(MESSAGE_KEY);
  return message;
}

function base64url(bytes) {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function callbackUrl() {
  return new URL('callback', new URL('./', document.baseURI)).href;
}

/** Sends the browser to the hosted UI with a fresh PKCE verifier and state. */
export async function startHostedSignIn() {
  const verifier = base64url(crypto.getRandomValues(new Uint8Array(32)));
  const state = base64url(crypto.getRandomValues(new Uint8Array(16)));
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  sessionStorage.setItem(PKCE_KEY, JSON.stringify({ verifier, state }));
  const url = new URL(`https://${config.domain}/oauth2/authorize`);
  url.searchParams.set('response_type', 'code');
  url.searchParams.set('client_id', config.clientId);
  url.searchParams.set('redirect_uri', callbackUrl());
  url.searchParams.set('scope', 'openid email profile');
  url.searchParams.set('state', state);
  url.searchParams.set('code_challenge_method', 'S256');
  url.searchParams.set('code_challenge', base64url(digest));
  location.assign(url);
}

/**
 * On /console/callback: trades the code for tokens and keeps the ID token (it carries the
 * agency and role claims the API's Cognito authorizer passes on). Returns an error text or null.
 */
export async function finishHostedSignIn() {
  const params = new URLSearchParams(location.search);
  const saved = JSON.parse(sessionStorage.getItem(PKCE_KEY) || 'null');
  sessionStorage.removeItem(PKCE_KEY);
  // The code must not stay in the address bar or the history.
  history.replaceState(null, '', new URL('./', document.baseURI).pathname);
  if (params.get('error')) return `Cognito refused the sign-in: ${params.get('error_description') || params.get('error')}`;
  if (!saved || params.get('state') !== saved.state) return 'The sign-in could not be verified (state mismatch); try again.';
  const body = new URLSearchParams({
    grant_type: 'authorization_code',
    client_id: config.clientId,
    code: params.get('code') || '',
    redirect_uri: callbackUrl(),
    code_verifier: saved.verifier,
  });
  try {
    const response = await fetch(`https://${config.domain}/oauth2/token`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body,
    });
    const data = await response.json();
    if (!response.ok) return `Cognito refused the sign-in: ${data.error_description || data.error || response.status}`;
    sessionStorage.setItem(TOKEN_KEY, data.id_token);
    return null;
  } catch (err) {
    return `Cognito could not be reached: ${err.message}`;
  }
}
