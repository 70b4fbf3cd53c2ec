// Mixdown conference app (plain ES2020, no build step, no libraries).
// Lobby: choose a room, a name and devices, with a live preview. Room: the server's single
// composite video with name labels and your own live camera laid over your tile, the
// participant list with the audience count, a banner while the room is recorded or streamed,
// chat, connection statistics and automatic reconnection. An access token in the address
// (`?token=` or `#token=`) is removed from it at once and sent with `join` and API calls.
// `?relay=1` sends all media through the TURN servers the server hands out (a check that
// TURN works, or a network that should see only the relay).
// Signalling is the JSON protocol over /ws described in docs/signalling.md.
// window.mixdown mirrors the live state for automated tests.
'use strict';

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'), error: $('error'), roomTitle: $('room-title'),
  lobby: $('lobby'), joinForm: $('join-form'), roomName: $('room-name'), displayName: $('display-name'),
  camera: $('camera'), microphone: $('microphone'), join: $('join'), preview: $('preview'),
  watchLink: $('watch-link'),
  room: $('room'), composite: $('composite'), overlay: $('overlay'), unmute: $('unmute'),
  muteAudio: $('mute-audio'), muteVideo: $('mute-video'), leave: $('leave'),
  layoutGrid: $('layout-grid'), layoutSpeaker: $('layout-speaker'),
  participants: $('participants'), participantCount: $('participant-count'),
  chatMessages: $('chat-messages'), chatForm: $('chat-form'), chatInput: $('chat-input'),
  stats: $('stats'), chart: $('stats-chart'),
  live: $('live-banner'), liveRecording: $('live-recording'), liveStreaming: $('live-streaming'),
  viewers: $('viewer-count'),
};

// An access token (docs/signalling.md) comes as `?token=` or `#token=`. It is taken out of the
// address bar and this history entry at once, so it is not bookmarked, shared, synced or left
// in the history, and kept in memory only (sent in `join` and as a Bearer token to the API).
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

// The name a token carries (`name`, else `sub`): the server uses it instead of the typed one.
// Read for display only; the server verifies the token.
function tokenName(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    const name = String(claims.name || claims.sub || '').trim();
    return name ? [...name].slice(0, 40).join('') : null;
  } catch {
    return null;
  }
}

// Headers for the REST API: the Bearer token when there is one.
const apiHeaders = (extra = {}) => (accessToken ? { ...extra, Authorization: `Bearer ${accessToken}` } : extra);

const params = new URLSearchParams(location.search);
const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
const DEVICE_NAMES = { audio: 'microphone', video: 'camera' };
// Media only through TURN relays (`?relay=1`).
const RELAY_ONLY = params.get('relay') === '1';
const MAX_ATTEMPTS = 12;   // reconnect attempts before giving up (about two minutes)
const CHART_POINTS = 60;   // one point per second
const CHART_COLORS = { in: '#4fd1c5', out: '#f6ad55' };

const emptyStats = () => ({
  framesDecoded: 0, frameWidth: 0, frameHeight: 0, audioLevel: 0,
  bitrateIn: 0, bitrateOut: 0, packetLoss: 0, rtt: 0, jitter: 0, quality: null,
});

// What the server says of this receiver's link: the tier it sends and its estimate
// (`GET /api/rooms/{room}`, every few seconds).
let serverQuality = null;
let qualityPolled = 0;
async function pollQuality() {
  if (!session || !mixdown.id || performance.now() - qualityPolled < 3000) return;
  qualityPolled = performance.now();
  try {
    const r = await fetch(`/api/rooms/${encodeURIComponent(session.room)}`, { headers: apiHeaders() });
    if (!r.ok) return;
    const info = await r.json();
    const me = (info.participants || []).find((p) => p.session === mixdown.id);
    serverQuality = me?.quality || null;
  } catch { /* the next poll tries again */ }
}

function qualityText(q) {
  if (!q) return '–';
  return q.link_kbps != null ? `${q.label}, link ${q.link_kbps} kbit/s` : q.label;
}

const mixdown = (window.mixdown = {
  state: 'lobby', id: null, participants: [], layout: null, chat: [], errors: [],
  stats: emptyStats(),
  // What the server says of the room's outputs and audience (`recording`, `streaming`,
  // `viewers` events); viewers is null until the server has said.
  recording: { active: false, count: 0 }, streaming: { active: false, kinds: [] }, viewers: null,
  sendChat, setMuted, leave, setLayoutMode, togglePin,
});

let codecError = null;       // why this browser cannot take part, if it cannot
let localStream = new MediaStream();
let previewToken = 0;        // discards a slower, superseded device request
const muted = { audio: false, video: false };
let session = null;          // {room, name, attempt, everJoined} while the user wants to be in
let conn = null;             // the current WebSocket and its offer/answer bookkeeping
let peer = null;             // the current RTCPeerConnection and its candidate queues
let iceServers = [];
let reconnectTimer = null;
let disconnectTimer = null;
let lastTotals = null;       // byte counters of the previous stats sample
const bitrates = { in: [], out: [] };   // the chart's samples

// The live camera over your own tile; moved into whichever tile is yours.
const selfPreview = document.createElement('video');
selfPreview.className = 'self-preview';
selfPreview.muted = true;
selfPreview.autoplay = true;
selfPreview.playsInline = true;
selfPreview.setAttribute('muted', '');
selfPreview.setAttribute('playsinline', '');

// ---------------------------------------------------------------- small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

const localTrack = (kind) => localStream.getTracks().find((t) => t.kind === kind && t.readyState === 'live');
const isOff = (kind) => !localTrack(kind) || muted[kind];
const watchUrl = (room) => `/watch/${encodeURIComponent(room || 'demo')}`;
const isDeviceError = (code) => /^(camera|microphone|media)-/.test(code);
const watchLink = (room) => carryToken(el('a', { href: watchUrl(room) }, 'watch the room instead'));

// A link to the other page of the app hands the token over in the fragment (which is never
// sent to the server and which that page removes at once), never in the visible address.
function carryToken(a) {
  a.addEventListener('click', (e) => {
    if (!accessToken || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    location.assign(`${a.href}#token=${encodeURIComponent(accessToken)}`);
  });
  return a;
}

function setState(state) {
  mixdown.state = state;
  document.body.dataset.state = state;
}

function setStatus(text, tone) {
  ui.status.textContent = text;
  ui.status.dataset.tone = tone;
}

// Shows an error the person can act on; `extra` is an optional link or button.
function showError(code, message, extra) {
  mixdown.errors.push({ code, message });
  const dismiss = el('button', { type: 'button', class: 'link' }, 'Dismiss');
  dismiss.onclick = () => clearError();
  ui.error.replaceChildren(el('span', {}, message, ...(extra ? [' ', extra] : [])), ' ', dismiss);
  ui.error.dataset.code = code;
  ui.error.hidden = false;
}

// Hides the error shown, or only if `which(code)` says so.
function clearError(which) {
  if (ui.error.hidden || (which && !which(ui.error.dataset.code))) return;
  ui.error.hidden = true;
  ui.error.replaceChildren();
  delete ui.error.dataset.code;
}

function send(msg) {
  if (!conn || conn.ws.readyState !== WebSocket.OPEN) return false;
  conn.ws.send(JSON.stringify(msg));
  return true;
}

// ---------------------------------------------------------------- lobby and devices

function checkCodecs() {
  if (!window.RTCPeerConnection) return 'This browser does not support WebRTC, so it cannot join a call.';
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return 'The camera and microphone are only available on a secure page (https or localhost).';
  }
  if (!RTCRtpSender.getCapabilities) return null;
  const has = (kind, re) => (RTCRtpSender.getCapabilities(kind)?.codecs || []).some((c) => re.test(c.mimeType));
  const missing = [];
  if (!has('video', /^video\/(vp8|h264)$/i)) missing.push('VP8 or H.264 video');
  if (!has('audio', /^audio\/opus$/i)) missing.push('Opus audio');
  return missing.length ? `This browser cannot send ${missing.join(' or ')}, which Mixdown needs. Try a current Chrome, Edge, Firefox or Safari.` : null;
}

function constraints(kind) {
  const id = (kind === 'video' ? ui.camera : ui.microphone).value;
  const base = kind === 'video'
    ? { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 30 } }
    : { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  return id ? { ...base, deviceId: { exact: id } } : base;
}

function deviceProblem(kind, e) {
  const device = DEVICE_NAMES[kind];
  if (e.name === 'NotAllowedError' || e.name === 'SecurityError') return { code: `${device}-denied`, text: `access to the ${device} was denied` };
  if (e.name === 'NotFoundError' || e.name === 'OverconstrainedError') return { code: `${device}-missing`, text: `no ${device} was found` };
  if (e.name === 'NotReadableError') return { code: `${device}-busy`, text: `the ${device} is in use by another application` };
  return { code: `${device}-failed`, text: `the ${device} could not be opened (${e.message || e.name})` };
}

const capitalise = (s) => s.charAt(0).toUpperCase() + s.slice(1);

// Opens camera and microphone (each on its own if together fails) and shows the preview.
// Resolves to whether at least one of them works: participants must publish something.
async function startPreview() {
  const token = ++previewToken;
  ui.join.disabled = true;
  localStream.getTracks().forEach((t) => t.stop());
  const tracks = [];
  const failures = {};
  const gum = (c) => navigator.mediaDevices.getUserMedia(c);
  try {
    tracks.push(...(await gum({ audio: constraints('audio'), video: constraints('video') })).getTracks());
  } catch {
    for (const kind of ['audio', 'video']) {
      try {
        tracks.push(...(await gum({ [kind]: constraints(kind) })).getTracks());
      } catch (e) {
        failures[kind] = deviceProblem(kind, e);
      }
    }
  }
  if (token !== previewToken) {
    tracks.forEach((t) => t.stop());
    return false;
  }
  localStream = new MediaStream(tracks);
  ui.preview.srcObject = localStream;
  await refreshDevices();
  clearError(isDeviceError);
  if (failures.audio && failures.video) {
    const retry = el('button', { type: 'button', class: 'link' }, 'Try again');
    retry.onclick = startPreview;
    const extra = el('span', {}, watchLink(ui.roomName.value), ' ', retry);
    showError('media-unavailable', `Taking part needs a camera or a microphone, but ${failures.audio.text} and ${failures.video.text}. ` +
      'Allow access in the browser’s site settings and try again, or', extra);
  } else if (failures.video || failures.audio) {
    const [kind, other] = failures.video ? ['video', 'audio'] : ['audio', 'video'];
    showError(failures[kind].code, `${capitalise(failures[kind].text)}. You can join with your ${DEVICE_NAMES[other]} only.`);
  }
  renderControls();
  ui.join.disabled = !!session || tracks.length === 0;
  return tracks.length > 0;
}

async function refreshDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
  fillSelect(ui.camera, devices.filter((d) => d.kind === 'videoinput'), localTrack('video'), 'Camera');
  fillSelect(ui.microphone, devices.filter((d) => d.kind === 'audioinput'), localTrack('audio'), 'Microphone');
}

function fillSelect(select, devices, track, label) {
  const current = track?.getSettings().deviceId || select.value;
  select.replaceChildren(...devices.map((d, i) => new Option(d.label || `${label} ${i + 1}`, d.deviceId)));
  if (!devices.length) select.append(new Option(`No ${label.toLowerCase()} found`, ''));
  select.value = devices.some((d) => d.deviceId === current) ? current : devices[0]?.deviceId ?? '';
  select.disabled = !devices.length;
}

// ---------------------------------------------------------------- joining and leaving

function join() {
  if (session || codecError) return;
  const room = ui.roomName.value.trim();
  const name = ui.displayName.value.trim();
  if (!ROOM_RE.test(room)) return showError('bad-room', 'A room name is 1 to 64 letters, digits, “_” or “-”.');
  const length = [...name].length;
  if (length < 1 || length > 40) return showError('bad-name', 'Enter a name of 1 to 40 characters.');
  if (!localTrack('audio') && !localTrack('video')) {
    return showError('media-unavailable', 'Taking part needs a camera or a microphone; you can', watchLink(room));
  }
  if (!ui.displayName.readOnly) localStorage.setItem('mixdown-name', name);
  clearError((code) => !isDeviceError(code));   // device warnings stay useful in the room
  session = { room, name, attempt: 0, everJoined: false };
  mixdown.chat = [];
  ui.chatMessages.replaceChildren();
  ui.join.disabled = true;
  ui.roomTitle.textContent = room;
  connect();
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  // In a cluster the room may live on another node, which `redirect` names.
  const ws = new WebSocket(session.server || `${scheme}//${location.host}/ws`);
  const c = (conn = { ws, opened: false, welcomed: false, offers: 0, answers: 0, answerFor: -1 });
  if (session.attempt === 0) {
    setState('joining');
    setStatus('connecting…', 'warn');
  }
  ws.onopen = () => {
    c.opened = true;
    send({ type: 'join', room: session.room, name: session.name, ...(accessToken ? { token: accessToken } : {}) });
  };
  ws.onmessage = (e) => {
    if (conn !== c) return;
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    onMessage(msg);
  };
  ws.onclose = () => {
    if (conn !== c) return;
    if (session.everJoined) lostConnection('the connection to the server was lost');
    else if (!c.opened) fail('unreachable', `Cannot reach the Mixdown server at ${location.host}. Check that it is running and your network, then try again.`);
    else fail('closed', 'The server closed the connection before you could join. Try again.');
  };
}

// Closes the peer connection and the WebSocket (saying `leave` if the server knows us).
function teardown() {
  clearTimeout(reconnectTimer);
  clearTimeout(disconnectTimer);
  closePeer();
  if (!conn) return;
  const { ws } = conn;
  ws.onopen = ws.onmessage = ws.onclose = null;
  if (ws.readyState === WebSocket.OPEN && conn.welcomed) ws.send(JSON.stringify({ type: 'leave' }));
  if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close();
  conn = null;
}

function closePeer() {
  if (!peer) return;
  const { pc } = peer;
  pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
  pc.close();
  peer = null;
}

// Unexpected loss: tear down and rejoin the same room with back-off 1, 2, 4, 8, 10… s.
function lostConnection(reason) {
  if (!session) return;
  teardown();
  // The node that served the room may be gone: ask this page's server again, which sends
  // us to wherever the room is now.
  session.server = null;
  if (session.attempt === 0) showError('connection-lost', `Connection lost (${reason}). Reconnecting…`);
  session.attempt += 1;
  if (session.attempt > MAX_ATTEMPTS) {
    return fail('connection-lost', 'Connection lost and reconnecting did not work. Check your network and join again.');
  }
  const delay = Math.min(1000 * 2 ** (session.attempt - 1), 10000);
  setState('reconnecting');
  setStatus(`reconnecting (attempt ${session.attempt})…`, 'warn');
  reconnectTimer = setTimeout(connect, delay);
}

// A problem that ends the session: back to the lobby with the reason shown.
function fail(code, message, extra) {
  teardown();
  session = null;
  resetRoom();
  setState('error');
  setStatus('disconnected', 'bad');
  showLobby();
  showError(code, message, extra);
}

function leave() {
  if (!session) return;
  teardown();
  session = null;
  resetRoom();
  setState('left');
  setStatus('disconnected', 'off');
  showLobby();
}

function resetRoom() {
  mixdown.id = null;
  mixdown.participants = [];
  mixdown.layout = null;
  mixdown.stats = emptyStats();
  muted.audio = muted.video = false;
  localStream.getTracks().forEach((t) => { t.enabled = true; });
  ui.composite.srcObject = null;
  ui.composite.muted = false;
  ui.unmute.hidden = true;
  bitrates.in = [];
  bitrates.out = [];
  lastTotals = null;
  resetLive();
  renderParticipants();
  renderOverlay();
  renderControls();
  renderStats();
}

function showLobby() {
  ui.room.hidden = true;
  ui.lobby.hidden = false;
  ui.roomTitle.textContent = '';
  ui.join.disabled = !!codecError || (!localTrack('audio') && !localTrack('video'));
}

function showRoom() {
  ui.lobby.hidden = true;
  ui.room.hidden = false;
  placeOverlay();
  drawChart();
}

// ---------------------------------------------------------------- signalling messages

// The room is served by another cluster node: join there instead.
function onRedirect(url) {
  if (!conn || conn.welcomed || typeof url !== 'string' || !/^wss?:\/\//.test(url)) return;
  const old = conn.ws;
  old.onopen = old.onmessage = old.onclose = null;
  old.close();
  session.server = url;
  connect();
}

function onMessage(msg) {
  switch (msg.type) {
    case 'welcome': return onWelcome(msg);
    case 'redirect': return onRedirect(msg.url);
    case 'answer': return onAnswer(msg.sdp);
    case 'candidate': return onRemoteCandidate(msg.candidate);
    case 'participant-joined':
    case 'participant-updated': upsertParticipant(msg.participant); return renderParticipants();
    case 'participant-left':
      mixdown.participants = mixdown.participants.filter((p) => p.id !== msg.id);
      return renderParticipants();
    case 'speaking': return setSpeaking(msg.id, msg.speaking);
    case 'layout': return setLayout(msg);
    case 'chat': return addChat(msg);
    case 'recording':
      mixdown.recording = { active: !!msg.active, count: Number(msg.count) || 0 };
      return renderLive();
    case 'streaming':
      mixdown.streaming = { active: !!msg.active, kinds: Array.isArray(msg.kinds) ? msg.kinds.map(String) : [] };
      return renderLive();
    case 'viewers':
      mixdown.viewers = Number(msg.count) || 0;
      return renderViewers();
    case 'shutting-down':
      // A restart: the call goes on until the server closes the room, and the reconnection
      // below (back-off 1, 2, 4… s) joins again once it is back.
      mixdown.shuttingDown = Number(msg.retry_after_s) || 0;
      return setStatus(`the server is restarting; this call reconnects in about ${mixdown.shuttingDown} s`, 'warn');
    case 'error': return onServerError(msg);
    default: return undefined;   // `left` acknowledges our own leave; nothing to do
  }
}

async function onWelcome(msg) {
  conn.welcomed = true;
  session.everJoined = true;
  if (msg.room) session.room = msg.room;
  mixdown.id = msg.id;
  iceServers = (msg.ice_servers || []).map((s) => (s.username
    ? { urls: s.urls, username: s.username, credential: s.credential }
    : { urls: s.urls }));
  mixdown.participants = [];
  // The server says again what runs once this participant is in (after its offer): what was
  // shown before a reconnection may have stopped meanwhile.
  resetLive();
  (msg.participants || []).forEach(upsertParticipant);
  if (!mixdown.participants.some((p) => p.id === msg.id)) {
    upsertParticipant({
      id: msg.id, name: session.name, audio_muted: muted.audio, video_muted: muted.video, speaking: false,
      publishes_audio: !!localTrack('audio'), publishes_video: !!localTrack('video'),
    });
  }
  renderParticipants();
  renderOverlay();
  setState('joined');
  setStatus(session.attempt ? `reconnecting (attempt ${session.attempt})…` : 'connecting…', 'warn');
  showRoom();
  await startPeer();
  // After a reconnect the server knows nothing of earlier mute state.
  const state = {};
  if (localTrack('audio') && muted.audio) state.audio = true;
  if (localTrack('video') && muted.video) state.video = true;
  if (Object.keys(state).length) send({ type: 'mute', ...state });
}

function onServerError({ code, message }) {
  const text = message || code;
  if (!session) {
    mixdown.errors.push({ code, message: text });   // e.g. after leaving; nothing to show
    return;
  }
  // Refused at `join`, or an offer refused (the reply to the offer still awaited): fatal.
  // Later (chat the token does not allow) it is only shown.
  const refusedEntry = !conn?.welcomed || conn.offers > conn.answers;
  switch (code) {
    case 'unauthorized':
      if (!refusedEntry) return showError(code, `Not allowed: ${text}`);
      return fail(code, accessToken
        ? `Your access link was not accepted: ${text}. Ask whoever invited you for a new link.`
        : 'This server only lets people in with an access link (an address ending in “?token=…”). Open the link you were given.');
    case 'forbidden':
      if (!refusedEntry) return showError(code, `Not allowed: ${text}`);
      return fail(code, `Your access link does not let you in here: ${text}.`);
    case 'too-many':
      return fail(code, `Too many connections from your network address are open already: ${text}. Close another Mixdown tab and try again.`);
    case 'room-full': return fail(code, `The room “${session.room}” is full. Try another room, or`, watchLink(session.room));
    case 'unavailable':
    case 'shutting-down':
      mixdown.errors.push({ code, message: text });
      return lostConnection(`the server is unavailable: ${text}`);
    case 'no-codec':
      return fail(code, 'The server cannot decode what this browser sends (it needs VP8 or H.264 video and Opus audio).');
    case 'bad-offer': return fail(code, `The server could not use this browser’s connection offer: ${text}`);
    default:
      if (!conn?.welcomed) return fail(code, `The server refused to let you join: ${text}`);
      return showError(code, `Server: ${text}`);
  }
}

// ---------------------------------------------------------------- the peer connection

// Builds a peer connection with all current local tracks (always receiving one audio and one
// video track) and sends its offer. Also used to renegotiate: the server answers every offer
// on a fresh connection, so the old one is closed.
async function startPeer() {
  closePeer();
  mixdown.iceServers = iceServers;
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: RELAY_ONLY ? 'relay' : 'all' });
  const p = (peer = { pc, offerIndex: -1, remoteSet: false, queued: [], outgoing: [], stream: new MediaStream() });
  for (const kind of ['audio', 'video']) {
    const track = localTrack(kind);
    if (track) pc.addTransceiver(track, { direction: 'sendrecv', streams: [localStream] });
    else pc.addTransceiver(kind, { direction: 'recvonly' });
  }
  pc.onicecandidate = ({ candidate }) => {
    if (candidate && !candidate.candidate) return;
    const c = candidate && { candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex };
    if (p.offerIndex >= 0) send({ type: 'candidate', candidate: c });
    else p.outgoing.push(c);   // the offer must reach the server first
  };
  pc.ontrack = ({ track }) => attachRemote(p, track);
  pc.onconnectionstatechange = () => onPeerState(pc.connectionState);
  try {
    await pc.setLocalDescription(await pc.createOffer());
  } catch (e) {
    if (peer === p) fail('offer-failed', `This browser could not start the call: ${e.message}`);
    return;
  }
  if (peer !== p || !send({ type: 'offer', sdp: pc.localDescription.sdp })) return;
  p.offerIndex = conn.offers++;
  p.outgoing.forEach((c) => send({ type: 'candidate', candidate: c }));
  p.outgoing = [];
}

// Answers arrive in offer order; an answer to an offer we replaced since is ignored, and so
// are the candidates that follow it.
async function onAnswer(sdp) {
  conn.answerFor = conn.answers++;
  const p = peer;
  if (!p || p.offerIndex !== conn.answerFor) return;
  try {
    await p.pc.setRemoteDescription({ type: 'answer', sdp });
  } catch (e) {
    if (peer === p) fail('bad-answer', `The server’s answer could not be used: ${e.message}`);
    return;
  }
  p.remoteSet = true;
  p.queued.forEach((c) => addCandidate(p, c));
  p.queued = [];
}

function onRemoteCandidate(candidate) {
  const p = peer;
  // null marks the end of the server's candidates; nothing needs doing for it.
  if (!p || !candidate || conn.answerFor !== p.offerIndex) return;
  if (p.remoteSet) addCandidate(p, candidate);
  else p.queued.push(candidate);
}

function addCandidate(p, candidate) {
  p.pc.addIceCandidate(candidate).catch((e) => console.warn('mixdown: candidate rejected', e));
}

function onPeerState(state) {
  clearTimeout(disconnectTimer);
  if (state === 'connected') {
    session.attempt = 0;
    setStatus('connected', 'ok');
    clearError((code) => code === 'connection-lost');
  } else if (state === 'failed') {
    lostConnection('the media connection failed');
  } else if (state === 'disconnected') {
    setStatus('connection interrupted…', 'warn');
    disconnectTimer = setTimeout(() => lostConnection('the media connection was interrupted'), 5000);
  }
}

function attachRemote(p, track) {
  if (peer !== p) return;
  p.stream.getTracks().filter((t) => t.kind === track.kind).forEach((t) => p.stream.removeTrack(t));
  p.stream.addTrack(track);
  if (ui.composite.srcObject !== p.stream) ui.composite.srcObject = p.stream;
  ui.composite.play().catch((e) => {
    if (e.name !== 'NotAllowedError') return;
    // Autoplay with sound was refused: play muted and offer to unmute.
    ui.composite.muted = true;
    ui.unmute.hidden = false;
    ui.composite.play().catch(() => {});
  });
}

// ---------------------------------------------------------------- mute controls

async function setMuted({ audio, video } = {}) {
  if (typeof audio === 'boolean') await setKindMuted('audio', audio);
  if (typeof video === 'boolean') await setKindMuted('video', video);
}

async function setKindMuted(kind, value) {
  let track = localTrack(kind);
  if (!value && !track) {
    track = await addDevice(kind);
    if (!track) return;
  }
  muted[kind] = value;
  if (track) {
    track.enabled = !value;
    send({ type: 'mute', [kind]: value });
  }
  renderControls();
  updateSelfPreview();
}

// Opens a device the participant joined without, then renegotiates to publish it.
async function addDevice(kind) {
  let track;
  try {
    [track] = (await navigator.mediaDevices.getUserMedia({ [kind]: constraints(kind) })).getTracks();
  } catch (e) {
    const problem = deviceProblem(kind, e);
    showError(problem.code, `${capitalise(problem.text)}.`);
    return null;
  }
  localStream.addTrack(track);
  if (peer) await startPeer();
  return track;
}

function renderControls() {
  const audioOff = isOff('audio');
  const videoOff = isOff('video');
  ui.muteAudio.textContent = !localTrack('audio') ? 'Turn on microphone' : audioOff ? 'Unmute' : 'Mute';
  ui.muteAudio.setAttribute('aria-pressed', String(audioOff));
  ui.muteVideo.textContent = videoOff ? 'Start camera' : 'Stop camera';
  ui.muteVideo.setAttribute('aria-pressed', String(videoOff));
}

// ---------------------------------------------------------------- participants and layout

function upsertParticipant(p) {
  if (!p || !p.id) return;
  const list = mixdown.participants;
  const i = list.findIndex((x) => x.id === p.id);
  if (i < 0) list.push({ speaking: false, ...p });
  else list[i] = { ...list[i], ...p };
}

function setSpeaking(id, speaking) {
  const p = mixdown.participants.find((x) => x.id === id);
  if (p) p.speaking = !!speaking;
  renderParticipants();
  ui.overlay.querySelector(`.tile[data-id="${CSS.escape(id)}"]`)?.classList.toggle('speaking', !!speaking);
}

// Speaking first, then pinned, then on screen, then the rest, each group in join order: in a
// room of a hundred the people that matter now are at the top of a list that scrolls.
function renderParticipants() {
  const list = mixdown.participants;
  const pinned = mixdown.layout?.pinned || [];
  const onScreen = new Set((mixdown.layout?.tiles || []).map((t) => t.id));
  const rank = (p) => (p.speaking ? 0 : pinned.includes(p.id) ? 1 : onScreen.has(p.id) ? 2 : 3);
  const order = list.map((p, i) => [rank(p), i, p]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  ui.participantCount.textContent = list.length ? `(${list.length})` : '';
  ui.participants.replaceChildren(...order.map(([, , p]) => {
    const isPinned = pinned.includes(p.id);
    const li = el('li', { 'data-id': p.id, class: onScreen.has(p.id) ? 'on-screen' : 'off-screen' },
      el('span', { class: `speaking-indicator${p.speaking ? ' on' : ''}`, role: 'img', 'aria-label': p.speaking ? 'speaking' : 'silent' }),
      el('span', { class: 'name' }, p.name));
    if (p.id === mixdown.id) li.append(el('span', { class: 'you' }, '(you)'));
    if (p.audio_muted || p.publishes_audio === false) li.append(el('span', { class: 'badge mic-off', title: 'microphone off' }, 'mic off'));
    if (p.video_muted || p.publishes_video === false) li.append(el('span', { class: 'badge cam-off', title: 'camera off' }, 'cam off'));
    const pin = el('button', { type: 'button', class: 'secondary pin', 'aria-pressed': String(isPinned),
      title: isPinned ? 'Unpin for everyone' : 'Pin on screen for everyone' }, isPinned ? 'Unpin' : 'Pin');
    pin.addEventListener('click', () => togglePin(p.id));
    li.append(pin);
    return li;
  }));
}

// The room's recordings and streams, shown as long as any runs: nobody is recorded or
// broadcast without seeing it.
const KIND_NAMES = { hls: 'HLS', rtmp: 'RTMP' };
function renderLive() {
  const { recording, streaming } = mixdown;
  const kinds = streaming.kinds.map((k) => KIND_NAMES[k] || k.toUpperCase());
  ui.liveRecording.hidden = !recording.active;
  ui.liveRecording.title = recording.count > 1 ? `${recording.count} recordings running` : 'This room is being recorded';
  ui.liveStreaming.hidden = !streaming.active;
  ui.liveStreaming.replaceChildren(...(streaming.active
    ? [el('span', { class: 'live-tag' }, 'Live'), `: ${kinds.join(', ') || 'streaming'}`] : []));
  ui.live.hidden = !recording.active && !streaming.active;
}

function resetLive() {
  mixdown.recording = { active: false, count: 0 };
  mixdown.streaming = { active: false, kinds: [] };
  mixdown.viewers = null;
  renderLive();
  renderViewers();
}

// Viewers are the audience (watch mode, WHEP): counted, not listed.
function renderViewers() {
  const n = mixdown.viewers;
  ui.viewers.textContent = n ? `${n} watching` : '';   // empty (and collapsed) when nobody
}

function setLayout(msg) {
  mixdown.layout = {
    width: msg.width, height: msg.height, tiles: msg.tiles || [],
    mode: msg.mode || 'grid', pinned: msg.pinned || [],
  };
  ui.layoutGrid.setAttribute('aria-pressed', String(mixdown.layout.mode === 'grid'));
  ui.layoutSpeaker.setAttribute('aria-pressed', String(mixdown.layout.mode === 'speaker'));
  renderOverlay();
  renderParticipants();
}

// The layout is the room's (everyone sees the same composite): PUT /api/rooms/{room}/layout.
async function putLayout(body) {
  if (!session) return false;
  try {
    const r = await fetch(`/api/rooms/${encodeURIComponent(session.room)}/layout`, {
      method: 'PUT', headers: apiHeaders({ 'Content-Type': 'application/json' }), body: JSON.stringify(body),
    });
    if (!r.ok) {
      const e = await r.json().catch(() => ({}));
      showError('layout', `Could not change the layout: ${e.error || r.status}`);
      return false;
    }
    clearError((code) => code === 'layout');
    return true;
  } catch {
    showError('layout', 'Could not change the layout: the server is unreachable');
    return false;
  }
}

function setLayoutMode(mode) {
  return putLayout({ mode });
}

function togglePin(id) {
  const pinned = mixdown.layout?.pinned || [];
  return putLayout({ pin: pinned.includes(id) ? pinned.filter((p) => p !== id) : [...pinned, id] });
}

// One positioned box per tile (fractions of the composite) with the name label; your own
// tile also holds the live camera preview.
function renderOverlay() {
  const tiles = mixdown.layout?.tiles || [];
  const pct = (v) => `${v * 100}%`;
  ui.overlay.replaceChildren(...tiles.map((t) => {
    const participant = mixdown.participants.find((p) => p.id === t.id);
    const tile = el('div', { class: `tile${participant?.speaking ? ' speaking' : ''}`, 'data-id': t.id });
    Object.assign(tile.style, { left: pct(t.x), top: pct(t.y), width: pct(t.w), height: pct(t.h) });
    if (t.id === mixdown.id) tile.append(selfPreview);
    tile.append(el('span', { class: 'label' }, t.name || participant?.name || ''));
    return tile;
  }));
  updateSelfPreview();
  placeOverlay();
}

function updateSelfPreview() {
  const track = localTrack('video');
  const show = !!track && !muted.video && selfPreview.isConnected;
  selfPreview.hidden = !show;
  if (!show) return;
  if (selfPreview.srcObject?.getVideoTracks()[0] !== track) selfPreview.srcObject = new MediaStream([track]);
  selfPreview.play().catch(() => {});
}

// Sizes the overlay to the area the video really covers (object-fit: contain letterboxes).
function placeOverlay() {
  const v = ui.composite;
  const cw = v.clientWidth;
  const ch = v.clientHeight;
  if (!cw || !ch) return;
  const vw = v.videoWidth || mixdown.layout?.width || 16;
  const vh = v.videoHeight || mixdown.layout?.height || 9;
  const scale = Math.min(cw / vw, ch / vh);
  const w = vw * scale;
  const h = vh * scale;
  Object.assign(ui.overlay.style, {
    left: `${v.offsetLeft + (cw - w) / 2}px`, top: `${v.offsetTop + (ch - h) / 2}px`,
    width: `${w}px`, height: `${h}px`,
  });
}

// ---------------------------------------------------------------- chat

function sendChat(text) {
  const t = String(text ?? '').trim();
  const length = [...t].length;
  if (!length || !conn?.welcomed) return false;
  if (length > 1000) {
    showError('chat-too-long', 'A chat message can be at most 1000 characters.');
    return false;
  }
  return send({ type: 'chat', text: t });
}

function addChat(msg) {
  mixdown.chat.push({ id: msg.id, name: msg.name, text: msg.text, time: msg.time });
  const date = new Date(msg.time);
  const time = Number.isNaN(date.getTime()) ? '' : date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const box = ui.chatMessages;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.append(el('div', { class: `chat-message${msg.id === mixdown.id ? ' own' : ''}` },
    el('span', { class: 'chat-name' }, msg.name),
    el('time', { class: 'chat-time', datetime: msg.time || '' }, time),
    el('p', { class: 'chat-text' }, msg.text)));
  if (atBottom || msg.id === mixdown.id) box.scrollTop = box.scrollHeight;
}

// ---------------------------------------------------------------- statistics

async function pollStats() {
  const p = peer;
  if (!p) return;
  let report;
  try { report = await p.pc.getStats(); } catch { return; }
  const s = emptyStats();
  let bytesIn = 0, bytesOut = 0, lost = 0, received = 0, pairId = null;
  report.forEach((r) => {
    if (r.type === 'inbound-rtp') {
      bytesIn += r.bytesReceived || 0;
      lost += r.packetsLost || 0;
      received += r.packetsReceived || 0;
      if (r.kind === 'video') {
        s.framesDecoded = r.framesDecoded || 0;
        s.frameWidth = r.frameWidth || 0;
        s.frameHeight = r.frameHeight || 0;
      } else if (r.kind === 'audio') {
        s.audioLevel = r.audioLevel || 0;
        s.jitter = Math.round((r.jitter || 0) * 10000) / 10;
      }
    } else if (r.type === 'outbound-rtp') {
      bytesOut += r.bytesSent || 0;
    } else if (r.type === 'transport' && r.selectedCandidatePairId) {
      pairId = r.selectedCandidatePairId;
    }
  });
  const pair = pairId ? report.get(pairId)
    : [...report.values()].find((r) => r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded');
  s.rtt = Math.round((pair?.currentRoundTripTime || 0) * 1000);
  s.packetLoss = lost + received > 0 ? Math.max(0, Math.round((10000 * lost) / (lost + received)) / 100) : 0;
  const now = performance.now();
  if (lastTotals?.pc === p.pc) {
    const seconds = (now - lastTotals.time) / 1000;
    s.bitrateIn = Math.max(0, Math.round(((bytesIn - lastTotals.bytesIn) * 8) / seconds / 1000));
    s.bitrateOut = Math.max(0, Math.round(((bytesOut - lastTotals.bytesOut) * 8) / seconds / 1000));
  }
  lastTotals = { pc: p.pc, time: now, bytesIn, bytesOut };
  await pollQuality();
  s.quality = serverQuality;
  if (peer !== p) return;
  mixdown.stats = s;
  bitrates.in = [...bitrates.in, s.bitrateIn].slice(-CHART_POINTS);
  bitrates.out = [...bitrates.out, s.bitrateOut].slice(-CHART_POINTS);
  renderStats();
  drawChart();
}

function renderStats() {
  const s = mixdown.stats;
  const known = !!peer;
  const text = {
    bitrateIn: `${s.bitrateIn} kbit/s`, bitrateOut: `${s.bitrateOut} kbit/s`,
    packetLoss: `${s.packetLoss.toFixed(1)} %`, rtt: `${s.rtt} ms`, jitter: `${s.jitter} ms`,
    resolution: s.frameWidth ? `${s.frameWidth}×${s.frameHeight}` : '–',
    quality: qualityText(s.quality),
  };
  ui.stats.querySelectorAll('[data-stat]').forEach((dd) => {
    dd.textContent = known ? text[dd.dataset.stat] : '–';
  });
}

// The last 60 s of bitrate in and out as two lines, scaled to the largest value shown.
function drawChart() {
  const canvas = ui.chart;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (!w || !h) return;
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(100, ...bitrates.in, ...bitrates.out) * 1.15;
  ctx.strokeStyle = 'rgba(255, 255, 255, 0.08)';
  ctx.lineWidth = 1;
  for (const f of [0.25, 0.5, 0.75]) {
    ctx.beginPath();
    ctx.moveTo(0, Math.round(h * f) + 0.5);
    ctx.lineTo(w, Math.round(h * f) + 0.5);
    ctx.stroke();
  }
  ctx.fillStyle = 'rgba(230, 232, 238, 0.6)';
  ctx.font = '10px system-ui, sans-serif';
  ctx.fillText(`${Math.round(max)} kbit/s`, 4, 11);
  const step = w / (CHART_POINTS - 1);
  for (const [series, color] of [[bitrates.in, CHART_COLORS.in], [bitrates.out, CHART_COLORS.out]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    series.forEach((v, i) => {
      const x = w - (series.length - 1 - i) * step;
      const y = h - 2 - (v / max) * (h - 4);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

// ---------------------------------------------------------------- wiring

function init() {
  ui.roomName.value = params.get('room') || 'demo';
  ui.displayName.value = params.get('name') || localStorage.getItem('mixdown-name') || '';
  const fixedName = accessToken && tokenName(accessToken);
  if (fixedName) {
    // The server names a participant after its token: show that name, not another.
    ui.displayName.value = fixedName;
    ui.displayName.readOnly = true;
    ui.displayName.title = 'Set by your access link';
  }
  ui.watchLink.href = watchUrl(ui.roomName.value);
  carryToken(ui.watchLink);
  ui.roomName.addEventListener('input', () => { ui.watchLink.href = watchUrl(ui.roomName.value.trim()); });
  ui.joinForm.addEventListener('submit', (e) => { e.preventDefault(); join(); });
  ui.camera.addEventListener('change', startPreview);
  ui.microphone.addEventListener('change', startPreview);
  ui.muteAudio.addEventListener('click', () => setMuted({ audio: !isOff('audio') }));
  ui.muteVideo.addEventListener('click', () => setMuted({ video: !isOff('video') }));
  ui.leave.addEventListener('click', leave);
  ui.layoutGrid.addEventListener('click', () => setLayoutMode('grid'));
  ui.layoutSpeaker.addEventListener('click', () => setLayoutMode('speaker'));
  ui.unmute.addEventListener('click', () => {
    ui.composite.muted = false;
    ui.composite.play().catch(() => {});
    ui.unmute.hidden = true;
  });
  ui.chatForm.addEventListener('submit', (e) => {
    e.preventDefault();
    if (sendChat(ui.chatInput.value)) ui.chatInput.value = '';
  });
  new ResizeObserver(placeOverlay).observe(ui.composite);
  ui.composite.addEventListener('resize', placeOverlay);   // the composite's size changed
  new ResizeObserver(drawChart).observe(ui.chart);
  window.addEventListener('pagehide', () => { if (session) teardown(); });
  setInterval(pollStats, 1000);
  renderControls();
  setState('lobby');

  codecError = checkCodecs();
  if (codecError) {
    setState('error');
    return showError('unsupported-browser', codecError, watchLink(ui.roomName.value));
  }
  navigator.mediaDevices.addEventListener('devicechange', refreshDevices);
  startPreview().then((ok) => {
    const auto = params.get('autojoin');
    if (ok && auto && auto !== '0' && auto !== 'false') join();
  });
}

init();
