// Status line, connection pill and the <body data-*> counters that tests (and curious users with
// dev tools) read. Numbers update on a timer; only the connection sentence is announced.

const TONES = { idle: 'idle', connecting: 'busy', waiting: 'busy', connected: 'live', closed: 'idle', error: 'error' };

export class StatusView {
  constructor(doc) {
    this.body = doc.body;
    this.pill = doc.getElementById('connection');
    this.fields = {
      state: doc.getElementById('stat-state'),
      rtt: doc.getElementById('stat-rtt'),
      buffer: doc.getElementById('stat-buffer'),
      frames: doc.getElementById('stat-frames'),
      tick: doc.getElementById('stat-tick'),
    };
  }

  setState(state, sentence) {
    this.body.dataset.state = state;
    this.pill.dataset.tone = TONES[state] || 'idle';
    this.pill.textContent = sentence;
    this.fields.state.textContent = state;
  }

  update({ framesSent, framesReceived, framesDecoded, rttMs, rttSource, bufferMs, textChars, flushes, underruns, tickMs }) {
    const d = this.body.dataset;
    d.framesSent = framesSent;
    d.framesReceived = framesReceived;
    d.framesDecoded = framesDecoded;
    d.rttMs = rttMs == null ? '' : Math.round(rttMs);
    d.bufferMs = Math.round(bufferMs);
    d.textChars = textChars;
    d.flushes = flushes;
    d.underruns = underruns;
    this.fields.rtt.textContent = rttMs == null ? '–' : `${Math.round(rttMs)} ms${rttSource === 'audio' ? ' (audio)' : ''}`;
    this.fields.buffer.textContent = `${Math.round(bufferMs)} ms`;
    this.fields.frames.textContent = `${framesSent} / ${framesReceived}`;
    this.fields.tick.textContent = tickMs == null ? '–' : `${Number(tickMs).toFixed(1)} ms p50`;
  }
}
