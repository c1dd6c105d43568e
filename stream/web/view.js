// Rendering of the selected stream: label, bars, circumplex, timeline, segment log. Text goes in through
// textContent only: stream names and labels come from other clients and the model, never as markup.
'use strict';

const PX_PER_S = 40;
const LOG_ROWS = 300;
const KNOWN_COLOURS = {
  angry: '#d1495b', happy: '#f2a541', neutral: '#8d99ae', sad: '#3d7dd8', calm: '#2a9d8f',
  fearful: '#8e6cc9', disgust: '#6a994e', surprised: '#e56bb0', uncertain: '#b8bec8',
};
const SPARE_COLOURS = ['#00798c', '#edae49', '#66a182', '#a06cd5', '#c05746', '#4f6d7a'];

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function colour(label, labels) {
  if (KNOWN_COLOURS[label]) return KNOWN_COLOURS[label];
  const i = Math.max(0, labels.indexOf(label));
  return SPARE_COLOURS[i % SPARE_COLOURS.length];
}

/** The model's name without its recipe: the description up to its first parenthesis, "+" or comma. */
function shortModel(description) {
  const head = String(description || '').split(/ \(| \+ |, | trained /)[0].trim() || 'unknown model';
  return head.length <= 40 ? head : `${head.slice(0, 39).replace(/\s+\S*$/, '')}…`;
}

/** A piece of a message that must not break across lines (an option, part of a URL). */
function code(text) { return el('code', '', text); }

/** The OOD score in words. It is the share of held-out speech of the kind the model was trained on that
 * is more typical than this segment (a percentile rank, serlive.model.calibration.ood_score). */
function oodWords(ood) {
  return ood >= 0.99 ? 'unlike the speech it was trained on'
    : `less typical than ${Math.round(ood * 100)}\u00a0% of its training speech`;
}

function oodTip(ood) {
  return `Out-of-distribution (OOD) score ${ood.toFixed(2)}: ${Math.round(ood * 100)} % of held-out speech like the `
    + 'speech this model was trained on is more typical than this segment. Near 1 the speech is unlike anything '
    + 'it was trained on (another language, a child, noise, a phone line): trust the label less.';
}

function oodNote(ood, short) {
  const note = el('abbr', 'ood', short ? `OOD ${ood.toFixed(2)}` : oodWords(ood));
  note.title = oodTip(ood);
  return note;
}

const pct = (p) => `${Math.round(p * 100)}\u00a0%`;  // no-break spaces: a number keeps its unit
const secs = (s) => `${s.toFixed(2)}\u00a0s`;
const isUncertain = (p) => p && p.uncertain === true;

function describe(seg) {
  const lines = [`segment ${seg.segment}  ${secs(seg.start)} – ${secs(seg.end)}`];
  if (seg.label) lines.push(`${seg.final ? 'final' : 'interim'}: ${seg.label} ${pct(seg.confidence)}${isUncertain(seg) ? ' (uncertain)' : ''}`);
  if (typeof seg.ood === 'number') lines.push(`${oodWords(seg.ood)} (OOD ${seg.ood.toFixed(2)})`);
  for (const [k, v] of Object.entries(seg.probs || {}).sort((a, b) => b[1] - a[1])) lines.push(`  ${k}  ${pct(v)}`);
  return lines.join('\n');
}

class View {
  constructor() {
    this.tip = el('div');
    this.tip.id = 'tip';
    this.tip.hidden = true;
    document.body.append(this.tip);
    const track = $('track');
    track.addEventListener('mousemove', (e) => this.hover(e));
    track.addEventListener('mouseleave', () => { this.tip.hidden = true; });
    this.logKey = '';
  }

  hover(e) {
    const seg = e.target.closest && e.target.closest('.seg');
    if (!seg || !seg.segData) { this.tip.hidden = true; return; }
    this.tip.textContent = describe(seg.segData);
    this.tip.hidden = false;
    this.tip.style.left = `${Math.min(e.clientX + 12, window.innerWidth - 220)}px`;
    this.tip.style.top = `${e.clientY + 14}px`;
  }

  health(stats) {
    if (!stats) {  // disconnected: no stale figures
      for (const id of ['h-device', 'h-rtf', 'h-latency', 'h-clients', 'h-dropped']) $(id).textContent = '–';
      return;
    }
    $('h-device').textContent = stats.device;
    $('h-rtf').textContent = stats.rtf.toFixed(3);
    const ms = (v) => (v === null || v === undefined ? '–' : `${Math.round(v)}`);
    $('h-latency').textContent = `${ms(stats.latency_p50_ms)} / ${ms(stats.latency_p95_ms)} ms`;
    $('h-clients').textContent = String(stats.clients);
    $('h-dropped').textContent = `${stats.dropped_audio_s.toFixed(1)} s`;
  }

  streams(app) {
    const ul = $('streams');
    ul.replaceChildren();
    for (const s of app.streams.values()) {
      const li = el('li', s.active ? '' : 'ended');
      if (s.name === app.selected) li.classList.add('selected');
      // The dot: filled in the last label's colour while the stream runs; an ended stream's is an empty
      // ring and one with no prediction yet a dashed ring, so neither reads as a label (neutral is grey too).
      const last = s.last;
      const dot = el('span', !s.active ? 'dot ended' : last && last.label ? 'dot' : 'dot none');
      if (s.active && last && last.label) dot.style.background = colour(isUncertain(last) ? 'uncertain' : last.label, app.labels);
      li.append(dot, el('span', 'name', s.name));
      const tags = el('span', 'tags');
      if (app.own.has(s.name)) tags.append(el('span', 'tag own', 'this page'));
      else if (s.remote) tags.append(remoteTag());
      if (!s.active) tags.append(el('span', 'tag ended', 'ended'));
      li.append(tags);
      if (!s.active) li.title = `ended${s.detail ? ': ' + s.detail : ''}`;
      li.addEventListener('click', () => app.select(s.name));
      ul.append(li);
    }
    $('no-streams').hidden = app.streams.size > 0;
  }

  current(app, s) {
    $('sel-name').textContent = s ? s.name + (s.active ? '' : ' (ended)') : 'No stream selected';
    $('sel-remote').replaceChildren(...(s && s.remote && !app.own.has(s.name) ? [remoteTag()] : []));
    const p = s && s.last;
    const label = $('label'), kind = $('sel-kind');
    label.className = 'label';
    kind.className = 'kind';
    if (!p) {  // words, not a dash: a lone "–" at this size reads as a stray black bar
      label.textContent = s ? 'No prediction yet' : 'Pick a stream, or send audio';
      label.classList.add('empty');
      kind.textContent = ''; $('confidence').textContent = '';
      $('bars').replaceChildren();
      this.dims(app, null);
      return;
    }
    const unsure = isUncertain(p);
    label.textContent = unsure ? 'uncertain' : p.label;
    label.classList.add(p.final ? 'final' : 'interim');
    if (unsure) label.classList.add('uncertain');
    kind.textContent = unsure ? 'uncertain' : (p.final ? 'final' : 'interim');
    kind.classList.add(unsure ? 'uncertain' : (p.final ? 'final' : 'interim'));
    const text = `${unsure ? 'leaning ' + p.label + ', ' : ''}confidence ${pct(p.confidence)} · segment ${p.segment} · ${secs(p.start)} – ${secs(p.end)}`;
    $('confidence').replaceChildren(text, ...(typeof p.ood === 'number' ? [' · ', oodNote(p.ood)] : []));
    const bars = $('bars');
    bars.replaceChildren();
    for (const name of app.labels) {
      const v = (p.probs && p.probs[name]) || 0;
      const bar = el('div', 'bar'), fill = el('div');
      fill.style.width = `${(v * 100).toFixed(1)}%`;
      fill.style.background = colour(name, app.labels);
      bar.append(fill);
      bars.append(el('span', 'name', name), bar, el('span', 'pct', pct(v)));
    }
    this.dims(app, p);
  }

  dims(app, p) {
    const dimensional = !!(app.hello && app.hello.dimensional);
    $('circumplex').toggleAttribute('hidden', !dimensional);  // an SVG element has no .hidden property
    $('no-dims').hidden = dimensional;
    const dot = $('va-dot');
    const has = dimensional && p && typeof p.valence === 'number' && typeof p.arousal === 'number';
    dot.setAttribute('visibility', has ? 'visible' : 'hidden');
    if (has) {  // valence and arousal lie in [-1, 1]; SVG y grows downwards
      dot.setAttribute('cx', String(Math.max(-1, Math.min(1, p.valence)) * 100));
      dot.setAttribute('cy', String(-Math.max(-1, Math.min(1, p.arousal)) * 100));
    }
  }

  timeline(app, s) {
    const track = $('track'), box = $('timeline');
    const atEnd = box.scrollLeft + box.clientWidth >= box.scrollWidth - 30;
    const segs = s ? [...s.segs.values()] : [];
    const endS = Math.max(s ? s.clock : 0, ...segs.map((g) => g.end), 1);
    track.style.width = `${Math.ceil(endS + 2) * PX_PER_S}px`;
    const keep = new Set();
    for (const g of segs) {
      const key = `${s.name}/${g.segment}`;
      keep.add(key);
      let div = track.querySelector(`[data-key="${CSS.escape(key)}"]`);
      if (!div) { div = el('div', 'seg'); div.dataset.key = key; track.append(div); }
      div.segData = g;
      div.className = `seg ${g.final ? 'final' : 'interim'}${isUncertain(g) ? ' uncertain' : ''}`;
      div.dataset.startS = g.start.toFixed(3); div.dataset.endS = g.end.toFixed(3);
      div.dataset.samples = g.final ? `${g.startSample}-${g.endSample}` : '';  // the exact bounds, for tests
      div.dataset.label = g.label || '';
      div.style.left = `${g.start * PX_PER_S}px`;
      div.style.width = `${Math.max(2, (g.end - g.start) * PX_PER_S)}px`;
      div.style.background = g.label ? colour(g.label, app.labels) : '#d0d4da';
      div.setAttribute('aria-label', describe(g));
    }
    for (const div of [...track.querySelectorAll('.seg')]) if (!keep.has(div.dataset.key)) div.remove();
    const ticks = Math.ceil(endS + 2);
    if (track.dataset.ticks !== String(ticks)) {
      track.querySelectorAll('.tick').forEach((t) => t.remove());
      const every = ticks > 600 ? 60 : ticks > 120 ? 10 : ticks > 30 ? 5 : 1;
      for (let t = 0; t <= ticks; t += every) {
        const tick = el('span', 'tick', `${t}s`);
        tick.style.left = `${t * PX_PER_S}px`;
        track.append(tick);
      }
      track.dataset.ticks = String(ticks);
    }
    if (atEnd) box.scrollLeft = box.scrollWidth;
    const legend = $('legend');
    if (legend.dataset.labels !== app.labels.join('\n')) {
      legend.replaceChildren(...app.labels.map((name) => {
        const item = el('span', '', name);
        item.style.setProperty('--c', colour(name, app.labels));
        return item;
      }));
      legend.dataset.labels = app.labels.join('\n');
    }
  }

  log(app, s) {
    const finals = s ? [...s.segs.values()].filter((g) => g.final) : [];
    const key = `${s ? s.name : ''}/${finals.length}/${s ? s.version : 0}`;
    if (key === this.logKey) return;
    this.logKey = key;
    const rows = finals.slice(-LOG_ROWS).reverse().map((g) => {
      const tr = el('tr');
      tr.dataset.segment = String(g.segment);
      for (const v of [g.segment, secs(g.start), secs(g.end), g.label, pct(g.confidence)]) tr.append(el('td', '', String(v)));
      const note = el('td', 'note', isUncertain(g) ? 'uncertain' : '');
      if (typeof g.ood === 'number') note.append(isUncertain(g) ? ', ' : '', oodNote(g.ood, true));
      tr.append(note);
      return tr;
    });
    $('log').tBodies[0].replaceChildren(...rows);
    $('ood-legend').hidden = !finals.some((g) => typeof g.ood === 'number');
  }
}

function remoteTag() {
  const tag = el('span', 'tag remote', '⇄ remote');
  tag.title = 'A remote stream: its audio and its name come from a WebSocket client. A client can copy a local '
    + "stream's name letter for letter (in another alphabet), but not this mark.";
  return tag;
}

window.SerView = { View, colour, shortModel, code };
