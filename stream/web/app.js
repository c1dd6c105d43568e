// The dashboard: one WebSocket for the feed (reconnecting with backoff), the streams' state, and the
// buttons that send audio. Protocol 2 is the reference; a protocol 1 feed is shown where it is cheap.
'use strict';

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 5000;
const byId = (id) => document.getElementById(id);

function socketUrl() {
  const url = window.SerAudio.withToken('/');
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

/** A declared format in words: "44100 Hz, f32le, 2 channels" (what the engine is told it receives). */
function describeFormat(f) {
  return f ? `${f.sample_rate_hz} Hz, ${f.encoding}, ${f.channels === 1 ? 'mono' : `${f.channels} channels`}` : '?';
}

class App {
  constructor() {
    this.view = new window.SerView.View();
    this.streams = new Map();  // name -> {name, active, detail, segs: Map(segment -> seg), last, clock, version}
    this.own = new Set();
    this.selected = null;
    this.hello = null;
    this.labels = [];
    this.backoffMs = RECONNECT_MIN_MS;
    this.dirty = false;
    this.mic = null;
  }

  connect() {
    const ws = new WebSocket(socketUrl());
    this.ws = ws;
    ws.onmessage = (e) => { try { this.handle(JSON.parse(e.data)); } catch (err) { console.error(err); } };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.hello = null;
      const wait = this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, RECONNECT_MAX_MS);
      this.status(false, `disconnected — reconnecting in ${(wait / 1000).toFixed(1)} s`);
      this.sendError('');  // what the engine that has gone said no longer holds
      for (const s of this.streams.values()) s.active = false;
      this.view.health(null);
      this.touch();
      setTimeout(() => this.connect(), wait);
    };
  }

  status(up, text) {
    const conn = byId('conn');
    conn.textContent = text;
    conn.className = `conn ${up ? 'conn-up' : 'conn-down'}`;
  }

  stream(name) {
    let s = this.streams.get(name);
    if (!s) {
      s = { name, active: true, remote: false, detail: '', segs: new Map(), last: null, clock: 0, version: 0 };
      this.streams.set(name, s);
      if (!this.selected) this.selected = name;
    }
    return s;
  }

  handle(m) {
    switch (m.type) {
      case 'hello': return this.onHello(m);
      case 'stream': {
        const known = this.streams.get(m.stream);
        if (known && !known.active && m.state === 'started') this.streams.delete(m.stream);  // a new stream, same name
        const s = this.stream(m.stream);
        s.active = m.state === 'started';
        s.remote = m.remote === true;  // a client chose this name: the page marks it (view.js)
        s.detail = m.detail || m.reason || '';
        break;
      }
      case 'segment_start': {
        const s = this.stream(m.stream);
        s.segs.set(m.segment, { segment: m.segment, start: m.start_s, end: m.end_s, final: false });
        s.clock = Math.max(s.clock, m.end_s);
        break;
      }
      case 'segment_end': {
        const s = this.stream(m.stream);
        const g = s.segs.get(m.segment);
        if (m.dropped) s.segs.delete(m.segment);
        else if (g) { g.start = m.start_s; g.end = m.end_s; }
        break;
      }
      case 'prediction': return this.onPrediction(m);
      case 'level': this.stream(m.stream).clock = Math.max(this.stream(m.stream).clock, m.sample / 16000); break;
      case 'stats': this.view.health(m); return;
      case 'error': if (m.stream && this.own.has(m.stream)) this.sendError(m.message); return;
      default: return;  // state, accepted (sender sockets handle theirs) and types a newer engine adds
    }
    this.touch();
  }

  onHello(m) {
    this.hello = m;
    this.labels = m.labels || [];
    this.backoffMs = RECONNECT_MIN_MS;
    byId('model').textContent = window.SerView.shortModel(m.model);
    byId('model-full').textContent = `${m.model} · protocol ${m.protocol}`;
    this.status(true, 'connected');
    if (m.accepts_audio !== false) this.sendError('');
    const running = new Set(m.streams || []);
    const remote = new Set(m.remote_streams || []);
    for (const s of this.streams.values()) s.active = running.has(s.name);
    for (const name of running) Object.assign(this.stream(name), { active: true, remote: remote.has(name) });
    if (this.selected && !this.streams.has(this.selected)) this.selected = null;
    if (!this.selected && running.size) this.selected = [...running][0];
    this.touch();
  }

  onPrediction(m) {
    const s = this.stream(m.stream);
    const g = s.segs.get(m.segment) || { segment: m.segment };
    if (g.final && !m.final) return;  // a late interim never replaces the final
    Object.assign(g, {
      start: m.start_s, end: m.end_s, startSample: m.start_sample, endSample: m.end_sample,
      final: m.final, label: m.label, probs: m.probs, confidence: m.confidence, valence: m.valence, arousal: m.arousal, uncertain: m.uncertain, ood: m.ood,
    });
    s.segs.set(m.segment, g);
    s.clock = Math.max(s.clock, m.end_s);
    if (m.final) s.version += 1;
    if (!s.last || m.segment >= s.last.segment) s.last = g;
    this.touch();
  }

  select(name) { this.selected = name; this.touch(); }

  follow(name) { this.own.add(name); this.stream(name); this.select(name); }

  touch() {
    if (this.dirty) return;
    this.dirty = true;
    requestAnimationFrame(() => { this.dirty = false; this.render(); });
  }

  render() {
    const s = this.selected ? this.streams.get(this.selected) : null;
    this.view.streams(this);
    this.view.current(this, s);
    this.view.timeline(this, s);
    this.view.log(this, s);
  }

  sendStatus(text) { byId('send-status').textContent = text; }

  /** ``parts``: strings, and ``{code: '...'}`` for what must not break across lines (an option, a URL part). */
  sendError(...parts) {
    const e = byId('send-error');
    e.replaceChildren(...parts.map((p) => (typeof p === 'string' ? p : window.SerView.code(p.code))));
    e.hidden = !e.textContent;
  }

  sender(name, format, onEnded) {
    return new window.SerAudio.AudioSender(socketUrl(), name, format, {
      onStream: (id) => this.follow(id), onEnded, onError: (msg) => this.sendError(msg),
    });
  }

  refusesAudio() {
    if (this.hello && this.hello.protocol >= 2 && this.hello.accepts_audio === false) {
      this.sendError('This engine does not accept audio from the page: start it with ', { code: '--accept-audio' },
        ', or open the page with its ', { code: '?token=' }, '.');
      return true;
    }
    return false;
  }

  async toggleMic() {
    const button = byId('mic');
    if (this.mic) {
      const mic = this.mic;
      this.mic = null;
      button.textContent = 'Use my microphone';
      button.classList.remove('on');
      this.sendStatus('microphone stopped');
      await mic.stop();
      return;
    }
    this.sendError('');
    if (this.refusesAudio()) return;
    const meter = byId('meter-bar');
    const level = (rms) => {  // -60..0 dBFS onto the bar
      const db = 20 * Math.log10(Math.max(rms, 1e-6));
      meter.style.width = `${Math.max(0, Math.min(100, (db + 60) / 60 * 100))}%`;
    };
    const mic = new window.SerAudio.Microphone((format) => this.sender('browser-mic', format, () => {}), level);
    this.mic = mic;
    button.textContent = 'Stop microphone';
    button.classList.add('on');
    try {
      await mic.start();
      this.sendStatus(`sending the microphone (${describeFormat(mic.sender.accepted)})`);
    } catch (err) {
      this.mic = null;
      button.textContent = 'Use my microphone';
      button.classList.remove('on');
      await mic.stop().catch(() => {});
      this.sendError(err.message || String(err));
    }
  }

  async sendFile(file) {
    this.sendError('');
    if (!file || this.refusesAudio()) return;
    const name = file.name.replace(/[^\w.\- ]+/g, '_').slice(0, 48) || 'file';
    try {
      this.sendStatus(`decoding ${name}…`);
      const audio = await window.SerAudio.decodeFile(file);
      const sender = this.sender(name, audio.format, () => this.sendStatus(`${name}: analysed`));
      const what = describeFormat(audio.format);
      await window.SerAudio.sendSamples(sender, audio, (done, total) =>
        this.sendStatus(`${name}: sent ${done.toFixed(0)} of ${total.toFixed(0)} s (${what})`));
    } catch (err) {
      this.sendError(`${name}: ${err.message || err}`);
    }
  }

  bind() {
    byId('mic').addEventListener('click', () => this.toggleMic());
    const drop = byId('drop');
    byId('file').addEventListener('change', (e) => { this.sendFile(e.target.files[0]); e.target.value = ''; });
    drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (e) => {
      e.preventDefault();
      drop.classList.remove('over');
      if (e.dataTransfer && e.dataTransfer.files.length) this.sendFile(e.dataTransfer.files[0]);
    });
  }
}

window.serliveApp = new App();
window.serliveApp.bind();
window.serliveApp.connect();
