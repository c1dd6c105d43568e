// Sending audio from the page: each source (microphone, dropped file) is its own WebSocket and its own
// remote stream. Protocol 2: start_stream, wait for `accepted`, then binary s16le 16 kHz mono. Protocol 1
// (no start_stream, no accepted): binary straight away, `?stream=` names it, the `stream`/started event
// tells its id. Nothing is sent until the person pressed a button or dropped a file.
'use strict';

const SEND_HIGH_WATER_BYTES = 256 * 1024;  // a file waits while this much is still queued on its socket
const FILE_CHUNK_SAMPLES = 16000;           // 1 s of 16 kHz audio per message
const S16LE_16K = { sample_rate_hz: 16000, encoding: 's16le', channels: 1 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withToken(path) {  // the page's own ?token= (the engine asks it of every request, files included)
  const url = new URL(path, location.href);
  const token = new URLSearchParams(location.search).get('token');
  if (token) url.searchParams.set('token', token);
  return url;
}

class AudioSender {
  // onStream(id): the engine's id for this stream; onEnded(): the stream's `ended` arrived.
  constructor(socketUrl, name, { onStream, onEnded, onError }) {
    this.name = name;
    this.onStream = onStream; this.onEnded = onEnded; this.onError = onError;
    this.stream = null;
    const url = new URL(socketUrl);
    url.searchParams.set('stream', name);
    this.ws = new WebSocket(url);
    this.ws.binaryType = 'arraybuffer';
    this.ready = new Promise((resolve, reject) => { this._resolve = resolve; this._reject = reject; });
    this.ws.onmessage = (e) => this._message(e.data);
    this.ws.onclose = () => this._reject(new Error('the connection to the engine closed'));
  }

  _message(data) {
    if (typeof data !== 'string') return;
    let m;
    try { m = JSON.parse(data); } catch { return; }
    if (m.type === 'hello') {
      if ((m.protocol || 1) < 2) { this.v1 = true; this._resolve(); return; }
      if (m.accepts_audio === false) {
        this._reject(new Error('This engine does not accept audio from the page: start it with --accept-audio (or open the page with its ?token=).'));
        return;
      }
      this.ws.send(JSON.stringify({ type: 'start_stream', stream: this.name, format: S16LE_16K }));
    } else if (m.type === 'accepted') {
      this._own(m.stream);
      this._resolve();
    } else if (m.type === 'stream' && this.v1 && this.sent && !this.stream && m.state === 'started'
               && (m.stream === this.name || m.stream.startsWith(this.name + '#'))) {
      this._own(m.stream);
    } else if (m.type === 'stream' && m.state === 'ended' && m.stream === this.stream) {
      this.onEnded();
      this.ws.close(1000);
    } else if (m.type === 'error' && (!m.stream || m.stream === this.stream)) {
      if (['bad_format', 'remote_audio_disabled', 'no_stream', 'bad_message'].includes(m.code)) {
        this._reject(new Error(m.message));
        this.onError(m.message);
      }
    }
  }

  _own(id) { this.stream = id; this.onStream(id); }

  send(buffer) { this.sent = true; this.ws.send(buffer); }

  async drain(limitBytes) {
    while (this.ws.readyState === WebSocket.OPEN && this.ws.bufferedAmount > limitBytes) await sleep(10);
  }

  end() {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    if (this.sent || !this.v1) this.ws.send(JSON.stringify({ type: 'end_stream' }));
    else this.ws.close(1000);
  }
}

class Microphone {
  constructor(sender, onLevel) { this.sender = sender; this.onLevel = onLevel; }

  async start() {
    this.media = await navigator.mediaDevices.getUserMedia(
      { audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    await this.sender.ready;
    this.ctx = new AudioContext();
    await this.ctx.audioWorklet.addModule(withToken('worklet.js'));
    this.node = new AudioWorkletNode(this.ctx, 'pcm16k', { numberOfInputs: 1, numberOfOutputs: 1 });
    this.node.port.onmessage = (e) => {
      if (this.sender.ws.readyState === WebSocket.OPEN) this.sender.send(e.data.pcm);
      this.onLevel(e.data.rms);
    };
    const silent = this.ctx.createGain();
    silent.gain.value = 0;  // pulls the worklet without playing anything
    this.ctx.createMediaStreamSource(this.media).connect(this.node);
    this.node.connect(silent).connect(this.ctx.destination);
    await this.ctx.resume();
  }

  async stop() {
    if (this.node) {
      this.node.port.postMessage('stop');
      await sleep(50);  // the worklet posts its last partial chunk
    }
    if (this.media) this.media.getTracks().forEach((t) => t.stop());
    if (this.ctx) await this.ctx.close();
    this.onLevel(0);
    this.sender.end();
  }
}

async function decodeTo16kMono(file) {
  const bytes = await file.arrayBuffer();
  const decoded = await new OfflineAudioContext(1, 1, 16000).decodeAudioData(bytes);  // resampled to 16 kHz
  const mix = new OfflineAudioContext(1, decoded.length, 16000);  // down-mixes to mono
  const src = mix.createBufferSource();
  src.buffer = decoded;
  src.connect(mix.destination);
  src.start();
  return (await mix.startRendering()).getChannelData(0);
}

async function sendSamples(sender, samples, onProgress) {
  await sender.ready;
  for (let i = 0; i < samples.length; i += FILE_CHUNK_SAMPLES) {
    const part = samples.subarray(i, i + FILE_CHUNK_SAMPLES);
    const pcm = new Int16Array(part.length);
    for (let j = 0; j < part.length; j++) pcm[j] = Math.round(Math.max(-1, Math.min(1, part[j])) * 32767);
    await sender.drain(SEND_HIGH_WATER_BYTES);
    if (sender.ws.readyState !== WebSocket.OPEN) throw new Error('the connection to the engine closed');
    sender.send(pcm.buffer);
    onProgress(Math.min(i + FILE_CHUNK_SAMPLES, samples.length) / 16000, samples.length / 16000);
  }
  sender.end();
}

window.SerAudio = { withToken, AudioSender, Microphone, decodeTo16kMono, sendSamples };
