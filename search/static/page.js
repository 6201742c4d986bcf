// The search page's script: every query goes through the JSON API (POST /api/search); every string from the
// server or the user is put on the page with textContent (never innerHTML); the address holds the query
// (?q=...&mode=...&page=... or ?keyid=...&mode=more|captions|videos&page=...) so a search can be shared.
'use strict';
const $ = (id) => document.getElementById(id);
const config = JSON.parse($('config').textContent);
const form = $('form'), fileInput = $('file'), clip = $('clip');
const ACTIONS = {more: 'motion', captions: 'text', videos: 'video'};
const TITLES = {more: 'more like', captions: 'captions of', videos: 'videos like'};
let chosen = null;        // the File of the video / motion mode
let current = null;       // the last query: {mode, q, keyid, page, k}
let clipUrl = null;

function mode() { return form.querySelector('input[name=mode]:checked').value; }

function setMode(m) {
  const box = $('mode-' + m);
  if (box && !box.disabled) box.checked = true;
  const text = mode() === 'text';
  $('text-box').hidden = !text;
  $('file-box').hidden = text;
  const allowed = config.against[mode()] || ['motion'];
  for (const opt of $('against').options) opt.disabled = !allowed.includes(opt.value);
  if (!allowed.includes($('against').value)) $('against').value = allowed[0];
  if (!text && chosen && kindOf(chosen) !== mode()) chooseFile(null);  // a file of the other kind: dropped, visibly
}

function kindOf(file) { return /\.npy$/i.test(file.name) ? 'motion' : 'video'; }

function chooseFile(file) {
  chosen = file;
  $('file-name').textContent = file ? file.name : '';
  if (clipUrl) { URL.revokeObjectURL(clipUrl); clipUrl = null; }
  $('clip-box').hidden = true;
  if (!file) return;
  setMode(kindOf(file));  // the mode follows the file, on screen: typed text is not searched in this mode
  if (kindOf(file) === 'video') {
    clipUrl = URL.createObjectURL(file);
    clip.src = clipUrl;
    $('clip-box').hidden = false;
  }
}

function drawCrop() {
  const box = $('crop-box');
  const on = $('crop-on').checked && clip.videoWidth > 0;
  box.style.display = on ? 'block' : 'none';
  if (!on) return;
  const f = clip.clientWidth / clip.videoWidth;
  const x = +$('crop-x').value || 0, y = +$('crop-y').value || 0;
  const s = +$('crop-size').value || Math.min(clip.videoWidth, clip.videoHeight);
  Object.assign(box.style, {left: (x * f) + 'px', top: (y * f) + 'px', width: (s * f) + 'px', height: (s * f) + 'px'});
}

clip.addEventListener('loadedmetadata', () => {
  const side = Math.min(clip.videoWidth, clip.videoHeight);
  $('crop-size').value = side;
  $('crop-x').value = Math.floor((clip.videoWidth - side) / 2);
  $('crop-y').value = Math.floor((clip.videoHeight - side) / 2);
  drawCrop();
});
for (const id of ['crop-on', 'crop-x', 'crop-y', 'crop-size']) $(id).addEventListener('input', drawCrop);
window.addEventListener('resize', drawCrop);
$('mark-start').addEventListener('click', () => { $('start').value = clip.currentTime.toFixed(2); });
$('mark-end').addEventListener('click', () => { $('end').value = clip.currentTime.toFixed(2); });
for (const r of form.querySelectorAll('input[name=mode]')) r.addEventListener('change', () => setMode(r.value));
fileInput.addEventListener('change', () => chooseFile(fileInput.files[0] || null));

const drop = $('drop');
for (const ev of ['dragenter', 'dragover']) {
  drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add('over'); });
}
for (const ev of ['dragleave', 'drop']) drop.addEventListener(ev, () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  e.stopPropagation();  // chosen here once, not again by the page's own drop handler
  if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
});
document.addEventListener('dragover', (e) => e.preventDefault());
document.addEventListener('drop', (e) => {
  e.preventDefault();
  if (e.dataTransfer && e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
});

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function action(cls, label, keyid, m) {
  const a = el('a', cls, label);
  a.href = '/?' + new URLSearchParams({keyid: keyid, mode: m});
  a.addEventListener('click', (ev) => { ev.preventDefault(); search({mode: m, keyid: keyid, page: 1}); });
  return a;
}

function card(hit) {
  const c = el('div', 'card');
  c.dataset.keyid = hit.keyid;
  c.dataset.row = hit.row;
  const url = hit.preview_url && (hit.preview_width || 0) >= 256 ? hit.preview_url : hit.skeleton_url;
  if (url) {
    const v = el('video');
    Object.assign(v, {src: url, autoplay: true, loop: true, muted: true, playsInline: true, controls: true,
                      preload: 'auto'});
    c.appendChild(v);
  }
  const score = el('div', 'score');
  score.append(el('span', 'rank', '#' + hit.rank), ' ' + hit.score.toFixed(3) + ' ', el('span', 'keyid', hit.keyid));
  c.appendChild(score);
  if (hit.caption) c.appendChild(el('div', 'cap', hit.caption));
  for (const t of (hit.captions || []).slice(0, 3)) c.appendChild(el('div', 'cap', t));
  if (hit.source_text) c.appendChild(el('div', 'src', hit.source_text));
  const acts = el('div', 'actions');
  acts.appendChild(action('act-more', 'more like this', hit.keyid, 'more'));
  acts.appendChild(action('act-captions', 'captions', hit.keyid, 'captions'));
  if (hit.has_video) acts.appendChild(action('act-videos', 'similar videos', hit.keyid, 'videos'));
  if (hit.motion_url) {
    const a = el('a', 'act-npy', '.npy');
    a.href = hit.motion_url;
    a.download = hit.keyid + '.npy';
    acts.appendChild(a);
  }
  c.appendChild(acts);
  return c;
}

function address(s) {
  const p = new URLSearchParams();
  if (s.keyid) p.set('keyid', s.keyid); else if (s.q) p.set('q', s.q);
  p.set('mode', s.mode);
  if (s.page > 1) p.set('page', s.page);
  if (s.k && +s.k !== 5) p.set('k', s.k);
  return '/?' + p.toString();
}

// overlapping searches: only the newest one's answer is shown and pushed to history (an older request is aborted,
// and its answer, if it still arrives, is dropped by the counter)
let searchSeq = 0;
let inflight = null;

async function search(s) {
  const seq = ++searchSeq;
  if (inflight) inflight.abort();
  inflight = null;
  const k = $('k').value || '5';
  s = Object.assign({k: k, page: 1}, s);
  const fd = new FormData();
  fd.append('k', s.k);
  fd.append('page', s.page);
  if (s.keyid) {
    fd.append('keyid', s.keyid);
    fd.append('against', ACTIONS[s.mode]);
  } else if (s.mode === 'text') {
    fd.append('text', s.q);
    fd.append('against', $('against').value);
  } else {
    if (!chosen) {
      $('error').textContent = 'choose or drop a ' + (s.mode === 'video' ? 'video' : '.npy motion') + ' file';
      return;
    }
    fd.append('file', chosen);
    fd.append('kind', s.mode);
    fd.append('against', $('against').value);
    if ($('start').value) fd.append('start', $('start').value);
    if ($('end').value) fd.append('end', $('end').value);
    if (s.mode === 'video' && $('crop-on').checked)
      fd.append('crop', [$('crop-x').value, $('crop-y').value, $('crop-size').value].join(','));
  }
  const err = $('error'), out = $('results'), status = $('status');
  err.textContent = '';
  out.replaceChildren();
  out.dataset.done = '';
  status.textContent = 'searching\u2026';
  const t0 = performance.now();
  const ctl = new AbortController();
  inflight = ctl;
  try {
    const r = await fetch('/api/search', {method: 'POST', body: fd, signal: ctl.signal});
    const data = await r.json();
    const ms = performance.now() - t0;
    if (seq !== searchSeq) return;  // a newer search was started meanwhile: its answer is the one shown
    inflight = null;
    if (!r.ok) {
      status.textContent = '';
      err.textContent = data.error || ('HTTP ' + r.status);
      out.dataset.done = 'error';
      return;
    }
    current = s;
    for (const hit of data.results) out.appendChild(card(hit));
    const l = data.latency_ms || {};
    status.textContent = data.results.length + ' results in ' + Math.round(ms) + ' ms (server ' +
      Math.round(l.total || 0) + ' ms: encode ' + Math.round(l.encode || 0) + ', search ' +
      Math.round(l.search || 0) + ')';
    status.dataset.ms = Math.round(ms);
    $('heading').textContent = s.keyid ? TITLES[s.mode] + ' ' + s.keyid : '';
    $('page').textContent = 'page ' + s.page;
    $('pager').hidden = false;
    $('prev').disabled = s.page <= 1;
    $('next').disabled = data.results.length < +s.k;
    if (s.mode === 'text' || s.keyid) history.pushState(s, '', address(s));
    else history.pushState(s, '', address({mode: s.mode, page: 1}));
    out.dataset.done = '1';
  } catch (e) {
    if (seq !== searchSeq) return;  // aborted or overtaken by a newer search
    inflight = null;
    status.textContent = '';
    err.textContent = String(e);
    out.dataset.done = 'error';
  }
}

form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const m = mode();
  search({mode: m, q: $('text').value, page: 1});
});
for (const a of document.querySelectorAll('#examples .example')) {
  a.addEventListener('click', (ev) => {
    ev.preventDefault();
    setMode('text');
    $('text').value = a.textContent;
    search({mode: 'text', q: a.textContent, page: 1});
  });
}
$('prev').addEventListener('click', () => {
  if (current && current.page > 1) search(Object.assign({}, current, {page: current.page - 1}));
});
$('next').addEventListener('click', () => {
  if (current) search(Object.assign({}, current, {page: current.page + 1}));
});
window.addEventListener('popstate', () => location.reload());

// a shared address: the server already rendered its results; the script takes over from there
(function start() {
  const p = new URLSearchParams(location.search);
  const res = $('results');
  const m = p.get('mode') || 'text';
  setMode(ACTIONS[m] ? 'text' : m);
  const page = +(p.get('page') || 1), k = p.get('k') || '5';
  if (p.get('keyid') && ACTIONS[m]) current = {mode: m, keyid: p.get('keyid'), page: page, k: k};
  else if (p.get('q') || p.get('text')) current = {mode: 'text', q: p.get('q') || p.get('text'), page: page, k: k};
  if (current && res.dataset.done === '1') {
    $('prev').disabled = current.page <= 1;
    $('next').disabled = res.children.length < +current.k;
    for (const c of res.querySelectorAll('.card')) {
      for (const [cls, am] of [['act-more', 'more'], ['act-captions', 'captions'], ['act-videos', 'videos']]) {
        const a = c.querySelector('.' + cls);
        if (!a) continue;
        a.addEventListener('click', (ev) => {
          ev.preventDefault();
          search({mode: am, keyid: c.dataset.keyid, page: 1});
        });
      }
    }
  }
})();
