// Mixdown watch mode: receive-only viewer for a room's audience. Sends a recvonly offer to
// POST /whep/{room} (after ICE gathering, at most 2 s), plays the composite and the full
// audio mix, retries with back-off when the server is unreachable or busy, and DELETEs the
// session's Location when the page goes away. An access token in the address (`?token=` or
// `#token=`) is removed from it at once, kept in memory and sent as `Authorization: Bearer`.
// The offer opens a `mixdown` data channel: the room's messages arrive on it (layout,
// participants, recording notices), and the page draws each tile's name over the picture.
// window.mixdownWatch mirrors the state for tests.
'use strict';

// Takes the token out of the address bar and this history entry (not bookmarked, shared or
// kept in the history); the same as in app.js.
function takeToken() {
  const url = new URL(location.href);
  const hash = new URLSearchParams(url.hash.slice(1));
  if (!url.searchParams.has('token') && !hash.has('token')) return null;
  const token = (url.searchParams.get('token') || hash.get('token') || '').trim();
  url.searchParams.delete('token');
  hash.delete('token');
  url.hash = hash.toString();
  window.history.replaceState(window.history.state, '', url.href);
  return token || null;
}
const accessToken = takeToken();

const $ = (id) => document.getElementById(id);
const video = $('composite');
const statusEl = $('status');
const errorEl = $('error');
const soundButton = $('play-sound');
const overlay = $('overlay');
const banner = $('notice');

const pathRoom = location.pathname.match(/^\/watch\/([^/]+)/);
const room = pathRoom ? decodeURIComponent(pathRoom[1]) : new URLSearchParams(location.search).get('room') || '';

const watch = (window.mixdownWatch = {
  state: 'connecting', room,
  stats: { framesDecoded: 0, frameWidth: 0, frameHeight: 0, audioLevel: 0 },
  // What the data channel said: the latest layout, recording and streaming notices.
  layout: null, recording: false, streaming: [], channel: 'closed',
});

let pc = null;
let sessionUrl = null;
let attempt = 0;
let retryTimer = null;
let disconnectTimer = null;

function setState(state, text, tone) {
  watch.state = state;
  statusEl.textContent = text;
  statusEl.dataset.tone = tone;
}

function showError(message) {
  errorEl.textContent = message;
  errorEl.hidden = false;
}

function clearError() {
  errorEl.hidden = true;
  errorEl.textContent = '';
}

// Ends the server session (if any) without waiting for the answer.
function release() {
  if (sessionUrl) fetch(sessionUrl, { method: 'DELETE', keepalive: true }).catch(() => {});
  sessionUrl = null;
}

function stop() {
  clearTimeout(retryTimer);
  clearTimeout(disconnectTimer);
  release();
  if (!pc) return;
  pc.ontrack = pc.onconnectionstatechange = null;
  pc.close();
  pc = null;
}

// Shows why watching stopped; retries (1, 2, 4, 8, 10… s) unless retrying cannot help.
function failed(message, retry) {
  stop();
  showError(message);
  if (!retry) {
    setState('error', 'disconnected', 'bad');
    return;
  }
  attempt += 1;
  const delay = Math.min(1000 * 2 ** (attempt - 1), 10000);
  setState('error', `retrying in ${Math.round(delay / 1000)} s (attempt ${attempt})…`, 'warn');
  retryTimer = setTimeout(run, delay);
}

function gatheringComplete(p, timeoutMs) {
  return new Promise((resolve) => {
    if (p.iceGatheringState === 'complete') return resolve();
    const timer = setTimeout(resolve, timeoutMs);
    p.addEventListener('icegatheringstatechange', () => {
      if (p.iceGatheringState !== 'complete') return;
      clearTimeout(timer);
      resolve();
    });
  });
}

async function describeFailure(res) {
  let detail = '';
  try { detail = (await res.json()).error || ''; } catch { /* no JSON body */ }
  const reasons = {
    400: 'The server did not accept the request',
    401: accessToken
      ? 'Your access link was not accepted'
      : 'This server only lets people watch with an access link (an address ending in “?token=…”); open the link you were given',
    403: 'Your access link does not let you watch this room',
    429: 'Too many connections from your network address are open already',
    404: 'The server has no watch endpoint for this room',
    406: 'The server cannot send a format this browser plays',
    503: `The room “${room}” cannot take another viewer right now`,
  };
  const reason = reasons[res.status] || `The server answered ${res.status}`;
  return `${reason}${detail ? `: ${detail}` : ''}.`;
}

async function start() {
  stop();
  setState(attempt ? 'reconnecting' : 'connecting', attempt ? `reconnecting (attempt ${attempt})…` : 'connecting…', 'warn');
  const p = (pc = new RTCPeerConnection());
  p.addTransceiver('video', { direction: 'recvonly' });
  p.addTransceiver('audio', { direction: 'recvonly' });
  // Made before the offer, so the offer has a data channel section.
  const channel = p.createDataChannel('mixdown');
  channel.onopen = () => { watch.channel = 'open'; };
  channel.onclose = () => { watch.channel = 'closed'; };
  channel.onmessage = (e) => {
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    if (pc === p) onRoomMessage(msg);
  };
  const stream = new MediaStream();
  p.ontrack = ({ track }) => {
    stream.getTracks().filter((t) => t.kind === track.kind).forEach((t) => stream.removeTrack(t));
    stream.addTrack(track);
    if (video.srcObject !== stream) video.srcObject = stream;
    play();
  };
  p.onconnectionstatechange = () => onState(p.connectionState);
  await p.setLocalDescription(await p.createOffer());
  await gatheringComplete(p, 2000);
  if (pc !== p) return;

  let res;
  try {
    res = await fetch(`/whep/${encodeURIComponent(room)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', ...(accessToken ? { Authorization: `Bearer ${accessToken}` } : {}) },
      body: p.localDescription.sdp,
    });
  } catch {
    if (pc === p) failed(`Cannot reach the Mixdown server at ${location.host}.`, true);
    return;
  }
  const locationHeader = res.headers.get('Location');
  const url = locationHeader && new URL(locationHeader, location.href).href;
  if (pc !== p) {
    if (res.status === 201 && url) fetch(url, { method: 'DELETE', keepalive: true }).catch(() => {});
    return;
  }
  if (res.status !== 201) {
    failed(await describeFailure(res), res.status >= 500 || res.status === 429);
    return;
  }
  sessionUrl = url;
  try {
    await p.setRemoteDescription({ type: 'answer', sdp: await res.text() });
  } catch (e) {
    if (pc === p) failed(`The server’s answer could not be used: ${e.message}`, false);
  }
}

function run() {
  start().catch((e) => failed(`Could not start watching: ${e.message}`, false));
}

// A room message from the data channel.
function onRoomMessage(msg) {
  if (msg.type === 'layout') {
    watch.layout = { width: msg.width, height: msg.height, tiles: msg.tiles || [] };
    renderOverlay();
  } else if (msg.type === 'recording') {
    watch.recording = !!msg.active;
    renderNotice();
  } else if (msg.type === 'streaming') {
    watch.streaming = msg.active ? msg.kinds || [] : [];
    renderNotice();
  }
}

// One box per tile (fractions of the composite) with the participant's name.
function renderOverlay() {
  const tiles = watch.layout?.tiles || [];
  const pct = (v) => `${v * 100}%`;
  overlay.replaceChildren(...tiles.map((t) => {
    const tile = document.createElement('div');
    tile.className = 'tile';
    tile.dataset.id = t.id;
    Object.assign(tile.style, { left: pct(t.x), top: pct(t.y), width: pct(t.w), height: pct(t.h) });
    const label = document.createElement('span');
    label.className = 'label';
    label.textContent = t.name || '';
    tile.append(label);
    return tile;
  }));
  placeOverlay();
}

// Sizes the overlay to the area the video really covers (object-fit: contain letterboxes).
function placeOverlay() {
  const cw = video.clientWidth;
  const ch = video.clientHeight;
  if (!cw || !ch) return;
  const vw = video.videoWidth || watch.layout?.width || 16;
  const vh = video.videoHeight || watch.layout?.height || 9;
  const scale = Math.min(cw / vw, ch / vh);
  Object.assign(overlay.style, {
    left: `${video.offsetLeft + (cw - vw * scale) / 2}px`, top: `${video.offsetTop + (ch - vh * scale) / 2}px`,
    width: `${vw * scale}px`, height: `${vh * scale}px`,
  });
}

function renderNotice() {
  const parts = [];
  if (watch.recording) parts.push('● Recording');
  if (watch.streaming.length) parts.push(`Live: ${watch.streaming.map((k) => k.toUpperCase()).join(', ')}`);
  banner.textContent = parts.join(' · ');
  banner.hidden = !parts.length;
}

function onState(state) {
  clearTimeout(disconnectTimer);
  if (state === 'connected') {
    attempt = 0;
    clearError();
    setState('connected', 'connected', 'ok');
  } else if (state === 'failed') {
    failed('The connection to the server was lost.', true);
  } else if (state === 'disconnected') {
    setState('reconnecting', 'connection interrupted…', 'warn');
    disconnectTimer = setTimeout(() => failed('The connection to the server was lost.', true), 5000);
  }
}

// Tries to play with sound; if autoplay with sound is refused, plays muted and offers sound.
function play() {
  video.play().catch((e) => {
    if (e.name !== 'NotAllowedError') return;
    video.muted = true;
    soundButton.hidden = false;
    video.play().catch(() => {});
  });
}

async function pollStats() {
  if (!pc) return;
  let report;
  try { report = await pc.getStats(); } catch { return; }
  const s = { framesDecoded: 0, frameWidth: 0, frameHeight: 0, audioLevel: 0 };
  report.forEach((r) => {
    if (r.type !== 'inbound-rtp') return;
    if (r.kind === 'video') {
      s.framesDecoded = r.framesDecoded || 0;
      s.frameWidth = r.frameWidth || 0;
      s.frameHeight = r.frameHeight || 0;
    } else if (r.kind === 'audio') {
      s.audioLevel = r.audioLevel || 0;
    }
  });
  watch.stats = s;
}

function init() {
  $('room-title').textContent = room;
  document.title = `Mixdown – watching ${room}`;
  const joinLink = $('join-link');
  joinLink.href = `/?room=${encodeURIComponent(room)}`;
  // The token goes along in the fragment (never sent to the server; the app removes it).
  joinLink.addEventListener('click', (e) => {
    if (!accessToken || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    location.assign(`${joinLink.href}#token=${encodeURIComponent(accessToken)}`);
  });
  soundButton.addEventListener('click', () => {
    video.muted = false;
    video.play().catch(() => {});
    soundButton.hidden = true;
  });
  window.addEventListener('pagehide', stop);
  window.addEventListener('resize', placeOverlay);
  video.addEventListener('loadedmetadata', placeOverlay);
  if (!window.RTCPeerConnection) {
    failed('This browser does not support WebRTC, so it cannot play the room.', false);
    return;
  }
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(room)) {
    failed('The address names no valid room: use /watch/ followed by the room name.', false);
    return;
  }
  setInterval(pollStats, 1000);
  run();
}

init();
