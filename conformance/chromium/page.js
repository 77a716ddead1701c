// Helpers the scenarios call in the headless page (chromium/scenarios.py), as `window.anchor`.
// Every function returns a promise of plain JSON-able values (CDP evaluates them with
// awaitPromise + returnByValue). Peer connections stay in `anchor.pcs` until closeAll().
(() => {
  const t0 = performance.now();
  const now = () => Math.round((performance.now() - t0) * 10) / 10;

  function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  // Record every state change of `pc` under `name`, with its time in ms.
  function watch(name, pc) {
    const log = { ice: [], connection: [], gathering: [], candidates: [] };
    pc.addEventListener('iceconnectionstatechange', () =>
      log.ice.push([pc.iceConnectionState, now()]));
    pc.addEventListener('connectionstatechange', () =>
      log.connection.push([pc.connectionState, now()]));
    pc.addEventListener('icegatheringstatechange', () =>
      log.gathering.push([pc.iceGatheringState, now()]));
    pc.addEventListener('icecandidate', (e) => {
      if (e.candidate && e.candidate.candidate) log.candidates.push(e.candidate.candidate);
    });
    anchor.pcs[name] = pc;
    anchor.logs[name] = log;
    return pc;
  }

  function gathered(pc, ms) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve(true);
    const done = new Promise((resolve) => {
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') resolve(true);
      });
    });
    // Gathering can hang in some set-ups (docs/peers.md): never wait forever.
    return withTimeout(done, ms, 'ICE gathering').catch(() => false);
  }

  function iceReaches(pc, states, ms) {
    const ok = () => states.includes(pc.iceConnectionState);
    if (ok()) return Promise.resolve(pc.iceConnectionState);
    const done = new Promise((resolve, reject) => {
      pc.addEventListener('iceconnectionstatechange', () => {
        if (ok()) resolve(pc.iceConnectionState);
        else if (pc.iceConnectionState === 'failed') reject(new Error('ICE failed'));
      });
    });
    return withTimeout(done, ms, `iceConnectionState in ${states}`);
  }

  async function selectedPair(pc) {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) {
        pair = stats.get(r.selectedCandidatePairId);
      }
    });
    if (!pair) {
      stats.forEach((r) => {
        if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') pair = r;
      });
    }
    if (!pair) return null;
    const side = (id) => {
      const c = stats.get(id);
      return c && {
        type: c.candidateType, address: c.address, port: c.port,
        protocol: c.protocol, relayProtocol: c.relayProtocol || null,
      };
    };
    return {
      state: pair.state, nominated: pair.nominated,
      local: side(pair.localCandidateId), remote: side(pair.remoteCandidateId),
      requestsSent: pair.requestsSent, responsesReceived: pair.responsesReceived,
      requestsReceived: pair.requestsReceived, responsesSent: pair.responsesSent,
    };
  }

  function channelOpen(dc, ms) {
    if (dc.readyState === 'open') return Promise.resolve(now());
    return withTimeout(new Promise((resolve) => {
      dc.addEventListener('open', () => resolve(now()));
    }), ms, `data channel ${dc.label} open`);
  }

  function nextMessages(dc, count, ms) {
    const got = [];
    return withTimeout(new Promise((resolve) => {
      dc.addEventListener('message', (e) => {
        got.push(typeof e.data === 'string' ? e.data : `<${e.data.byteLength} bytes>`);
        if (got.length >= count) resolve(got);
      });
    }), ms, `${count} messages on ${dc.label}`);
  }

  function echo(dc) {
    dc.addEventListener('message', (e) => dc.send(`echo:${e.data}`));
  }

  const anchor = {
    pcs: {},
    logs: {},
    now,

    // Two peer connections in this page, relay-only through `turn`, joined by trickling
    // candidates to each other; a data channel carries `count` messages each way. They are
    // named `${prefix}a` and `${prefix}b` in anchor.pcs (several pairs can live at once).
    async relayPair(turn, count, ms, prefix = '') {
      const config = {
        iceTransportPolicy: 'relay',
        iceServers: [{ urls: turn.urls, username: turn.username, credential: turn.credential }],
      };
      const began = now();
      const a = watch(`${prefix}a`, new RTCPeerConnection(config));
      const b = watch(`${prefix}b`, new RTCPeerConnection(config));
      a.addEventListener('icecandidate', (e) => { if (e.candidate) b.addIceCandidate(e.candidate); });
      b.addEventListener('icecandidate', (e) => { if (e.candidate) a.addIceCandidate(e.candidate); });
      const dcA = a.createDataChannel('anchor');
      const gotB = new Promise((resolve) => b.addEventListener('datachannel', (e) => resolve(e.channel)));
      await a.setLocalDescription(await a.createOffer());
      await b.setRemoteDescription(a.localDescription);
      await b.setLocalDescription(await b.createAnswer());
      await a.setRemoteDescription(b.localDescription);
      const dcB = await withTimeout(gotB, ms, 'datachannel event');
      const openA = await channelOpen(dcA, ms);
      const openB = await channelOpen(dcB, ms);
      const atB = nextMessages(dcB, count, ms);
      const atA = nextMessages(dcA, count, ms);
      for (let i = 0; i < count; i++) dcA.send(`a->b ${i}`);
      const receivedB = await atB;
      for (let i = 0; i < count; i++) dcB.send(`b->a ${i}`);
      const receivedA = await atA;
      return {
        began, open_ms: Math.max(openA, openB) - began,
        received_a: receivedA, received_b: receivedB,
        pair_a: await selectedPair(a), pair_b: await selectedPair(b),
        ice_a: a.iceConnectionState, ice_b: b.iceConnectionState,
        candidates_a: anchor.logs[`${prefix}a`].candidates,
        candidates_b: anchor.logs[`${prefix}b`].candidates,
      };
    },

    // An offer from a fresh peer connection with one data channel, once gathering ended
    // (or after `ms`): the SDP text.
    async makeOffer(name, ms) {
      const pc = watch(name, new RTCPeerConnection({ iceServers: [] }));
      pc.createDataChannel('anchor');
      await pc.setLocalDescription(await pc.createOffer());
      const complete = await gathered(pc, ms);
      return { sdp: pc.localDescription.sdp, gathering_complete: complete, at: now() };
    },

    // A data channel peer that echoes every message back as `echo:` + message: offering
    // (its own channel 'anchor') or answering (the channel the offer brings).
    async offerEcho(name, ms) {
      const pc = watch(name, new RTCPeerConnection({ iceServers: [] }));
      echo(pc.createDataChannel('anchor'));
      await pc.setLocalDescription(await pc.createOffer());
      const complete = await gathered(pc, ms);
      return { sdp: pc.localDescription.sdp, gathering_complete: complete, at: now() };
    },

    async answerEcho(name, sdp, ms) {
      const pc = watch(name, new RTCPeerConnection({ iceServers: [] }));
      pc.addEventListener('datachannel', (e) => echo(e.channel));
      await pc.setRemoteDescription({ type: 'offer', sdp });
      await pc.setLocalDescription(await pc.createAnswer());
      const complete = await gathered(pc, ms);
      return { sdp: pc.localDescription.sdp, gathering_complete: complete, at: now() };
    },

    // Apply the remote answer to the offerer `name`.
    async acceptAnswer(name, sdp) {
      const pc = anchor.pcs[name];
      await pc.setRemoteDescription({ type: 'answer', sdp });
      return now();
    },

    // Answer a remote offer with a fresh peer connection: the answer's SDP text.
    async answerOffer(name, sdp, ms) {
      const pc = watch(name, new RTCPeerConnection({ iceServers: [] }));
      await pc.setRemoteDescription({ type: 'offer', sdp });
      await pc.setLocalDescription(await pc.createAnswer());
      const complete = await gathered(pc, ms);
      return { sdp: pc.localDescription.sdp, gathering_complete: complete, at: now() };
    },

    // Wait until `name`'s iceConnectionState is connected or completed.
    async iceConnected(name, ms) {
      const pc = anchor.pcs[name];
      const state = await iceReaches(pc, ['connected', 'completed'], ms);
      return { state, at: now() };
    },

    // What `name` looks like now: states, their history, the selected pair.
    async report(name) {
      const pc = anchor.pcs[name];
      return {
        ice: pc.iceConnectionState, connection: pc.connectionState,
        gathering: pc.iceGatheringState, log: anchor.logs[name],
        pair: await selectedPair(pc), at: now(),
      };
    },

    closeAll() {
      for (const pc of Object.values(anchor.pcs)) pc.close();
      anchor.pcs = {};
      return true;
    },
  };
  window.anchor = anchor;
  return true;
})();
