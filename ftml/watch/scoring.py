"""New rows -> final windows -> scores -> the event builder, through the batch functions:
the steady state's fast path (one new complete row per entity: ``standardise`` and
``window_features`` on it alone), else the batch block loop over the buffered rows
(``normalise``, ``Featurizer.window_blocks``); ``model.score_windows``, batch's ``FlagGate``
and one long-lived ``EventBuilder``."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ftml.errors import FtmlError
from ftml.features import Windows, level_of_sums, level_units, window_features
from ftml.io import normalise, to_ns
from ftml.pipeline import unseen_entities, unseen_entities_warning
from ftml.watch.buffers import NO_SLOT
from ftml.watch.results import TickResult

log = logging.getLogger("ftml.watch")  # one logger for the whole loop: what users filter on


class ScoringMixin:
    """Buffers -> windows -> scores -> events (a part of :class:`Watcher`)."""

    def _process(self, frames: list[tuple], now: float, out: TickResult,
                 final: bool) -> None:
        b = self._buffers
        n_before = b.n
        fast_w = None
        if frames:
            names = np.concatenate([f[0] for f in frames])
            ts = np.concatenate([f[1] for f in frames])
            vals = np.concatenate([f[2] for f in frames])
            inverse, uniques = pd.factorize(names, sort=False)
            ent = b.codes([str(u) for u in uniques.tolist()])[inverse.astype(np.int64)]
            saved = {k: getattr(b, k)[ent].copy()
                     for k in ("newest", "first", "last_finite", "done")}
            touched, late, fast = b.add(ent, ts, vals)
            if late:
                self.metrics.late.inc(late)
                log.warning("%d row(s) older than the buffer (%d steps) dropped", late, b.keep)
                keep = b.slots(ts) > saved["newest"] - b.keep
                ent, ts, vals = ent[keep], ts[keep], vals[keep]
                saved = {k: v[keep] for k, v in saved.items()}
            general = np.setdiff1d(touched, ent[fast], assume_unique=False)
            if fast.any():
                fast_w = self._fast_windows(ent[fast], b.slots(ts[fast]), vals[fast])
        else:
            general = np.flatnonzero(b.newest > b.done)
        parts = [fast_w] if fast_w is not None and len(fast_w[0]) else []
        if len(general):
            try:
                gen_w = self._windows(general, final)
            except Exception as exc:
                # Rows that break normalisation (e.g. a stray timestamp making a huge grid)
                # would break every later tick too: this tick's rows of these entities are
                # dropped, with why; the fast path's entities go on.
                if frames:
                    b.drop_rows(n_before, general)
                    mine = np.isin(ent, general)
                    for k, v in saved.items():
                        getattr(b, k)[ent[mine]] = v[mine]
                b.ring_ok[general] = False
                self.metrics.errors.labels("loop", "windows").inc()
                log.error("rows of %d entities dropped: %s", len(general), exc,
                          exc_info=not isinstance(exc, FtmlError))
            else:
                if len(gen_w[0]):
                    parts.append(gen_w)
        if parts:
            w = parts[0][0] if len(parts) == 1 else Windows.concat(
                [p[0] for p in parts], parts[0][0].X.shape[1], b.m)
            codes = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
            self._score(w, codes, now, out)
        # The trim is maintain()'s work between ticks; here only when nothing calls that.
        b.trim(4.0)
        self._snapshot = (b.ent, b.ts, b.vals)
        self.metrics.entities.set(len(b.names))

    def _fast_windows(self, codes: np.ndarray, slots: np.ndarray, vals: np.ndarray
                      ) -> tuple[Windows, np.ndarray]:
        """The steady state: one new complete row per entity, right after its newest. Its
        window is the entity's last `window` standardised rows, so the two halves of
        ``transform_frame`` (``standardise``, ``window_features``) run on the new rows only;
        the result is what ``transform_frame`` gives on the whole buffer."""
        b = self._buffers
        fz = self.model.featurizer
        names = np.asarray(b.names, dtype=object)
        ts = slots * self.step_ns
        if self._counters:
            # Rates need the row before: standardise (previous, new) pairs, keep the new.
            k = len(codes)
            pair_vals = np.empty((2 * k, b.m))
            pair_vals[0::2], pair_vals[1::2] = b.lastval[codes], vals
            pair_codes = np.repeat(codes, 2)
            pair_ts = np.repeat(ts, 2)
            pair_ts[0::2] -= self.step_ns
        else:
            pair_vals, pair_codes, pair_ts = vals, codes, ts
        if len(self._known) < len(b.names):  # each entity's place in the baseline, once
            self._known = np.concatenate(
                [self._known, fz.baseline_.entity_index(b.names[len(self._known):])])
        # What standardise(level=False) gives on these rows as a frame, without building one.
        z, values = fz.standardise_arrays(pair_vals, pair_codes,
                                          self._known[pair_codes], pair_ts)
        if self._counters:
            z, values = z[1::2], values[1::2]
        b.lastval[codes] = vals
        w, r = self.window, self.ring_rows
        span = r - w
        b.ring[codes, slots % r] = z  # circular: one row written, none moved
        if span > 0:
            # The new row less its trailing level, from the running sums of the span before
            # it: trailing_level's integers and float operations, so the same bits as
            # standardising the whole history. Then the span moves on by this row.
            clip = float(fz.level_clip)
            ue, ce = level_units(z, clip)
            ul, cl = level_units(b.ring[codes, (slots - span) % r], clip)
            z = z - level_of_sums(b.lsum[codes], b.lcnt[codes], span)
            b.lsum[codes] += ue - ul
            b.lcnt[codes] += ce - cl
        win = np.concatenate([b.win[codes, 1:], z[:, None, :]], axis=1)
        b.win[codes] = win
        b.done[codes] = slots
        X, end = window_features(win.reshape(-1, b.m), np.repeat(np.arange(len(codes)), w),
                                 w, 1, fz.stats)
        i = end // w
        keep = np.ones(len(i), dtype=bool)
        if self.stride > 1:
            keep = (slots[i] - b.first[codes[i]] - (w - 1)) % self.stride == 0
        i = i[keep]
        win = Windows(X[keep], names[codes[i]], ts[i], i.astype(np.int64), values[i])
        return win, codes[i]

    def _windows(self, touched: np.ndarray, final: bool) -> tuple[Windows, np.ndarray]:
        """New final windows of the touched entities, by normalising their buffered rows and
        ``model.featurizer.transform_frame``, exactly as batch; and each one's entity code.
        Also refreshes these entities' fast-path state."""
        b = self._buffers
        sel = np.zeros(len(b.names), dtype=bool)
        sel[touched] = True
        rows = sel[b.ent]
        names = np.asarray(b.names, dtype=object)
        raw = pd.DataFrame(b.vals[rows], columns=self._columns)
        raw.insert(0, "timestamp", pd.to_datetime(b.ts[rows], unit="ns", utc=True))
        raw.insert(0, "entity", pd.Categorical.from_codes(b.ent[rows], categories=names)
                   .remove_unused_categories())
        frame, _ = normalise(raw, self.model.step, self.fill, b.metrics)
        cats = frame["entity"].cat
        cat_code = np.array([b.index[str(n)] for n in cats.categories], dtype=np.int64)
        row_code = cat_code[cats.codes.to_numpy()]
        slot = to_ns(frame["timestamp"]) // self.step_ns
        # Only rows that new windows need: from a window before the first window not yet
        # scored, and the row before that (counter rates).
        need = slot >= b.done[row_code] - self.ring_rows
        if not need.all():
            frame = frame[need]
            row_code, slot = row_code[need], slot[need]
        if final:
            last = b.newest.copy()
        else:
            last = np.full(len(b.names), NO_SLOT)
            last[touched] = b.final_slots(touched, self.fill)
        done_before = b.done.copy()
        b.done[touched] = np.maximum(b.done[touched], last[touched])
        # The batch block loop, with each entity's windows after those scored before and up
        # to the last final one (slots -> the ns bounds of window_blocks).
        step = self.step_ns
        since = {b.names[c]: (int(done_before[c]) + 1) * step - 1 for c in touched.tolist()
                 if done_before[c] != NO_SLOT}
        until = {b.names[c]: (int(last[c]) + 1) * step - 1 for c in touched.tolist()}
        w = Windows.concat([blk.windows() for blk in self._fz.window_blocks(
            frame, max(len(frame), 1), since=since, until=until)],
            len(self.model.featurizer.feature_names_), b.m)
        self._refresh_fast(frame, row_code, slot, touched)
        if not len(w):
            return w, np.empty(0, dtype=np.int64)
        code = row_code[w.row]
        if self.stride > 1:  # counted from each entity's first slot ever, not the buffer's
            keep = (w.end_ns // step - b.first[code] - (self.window - 1)) % self.stride == 0
            return w.take(keep), code[keep]
        return w, code

    def _refresh_fast(self, frame: pd.DataFrame, row_code: np.ndarray, slot: np.ndarray,
                      touched: np.ndarray) -> None:
        """After the general path: the fast path's ring and last row of these entities, valid
        when every window up to the newest is scored (nothing waits on a gap)."""
        b = self._buffers
        fz = self.model.featurizer
        r, w = self.ring_rows, self.window
        z, _, _ = fz.standardise(frame, level=False)
        b.ring[touched] = np.nan
        lo = b.newest[row_code] - r + 1
        in_ring = slot >= lo
        b.ring[row_code[in_ring], slot[in_ring] % r] = z[in_ring]
        # The last window less its levels, by the batch function on the ring in time order;
        # the level's sums over the span before the next row: newest-span+1 .. newest.
        order = (b.newest[touched][:, None] + np.arange(1 - r, 1)) % r
        rows = b.ring[touched[:, None], order]
        if r > w:
            rows = fz.remove_level(rows.reshape(-1, b.m),
                                   np.repeat(np.arange(len(touched)), r)).reshape(rows.shape)
            u, c = level_units(b.ring[touched[:, None], order[:, w:]], float(fz.level_clip))
            b.lsum[touched] = u.sum(axis=1)
            b.lcnt[touched] = c.sum(axis=1)
        b.win[touched] = rows[:, r - w:]
        at_newest = slot == b.newest[row_code]
        b.lastval[touched] = np.nan
        b.lastval[row_code[at_newest]] = frame[b.metrics].to_numpy(dtype=np.float64)[at_newest]
        b.ring_ok[touched] = b.done[touched] == b.newest[touched]

    def _warn_unseen(self, names: list[str]) -> None:
        line = unseen_entities_warning(self.model, unseen_entities(self.model, names))
        if line:
            log.warning(line)

    def _score(self, w: Windows, codes: np.ndarray, now: float, out: TickResult) -> None:
        b = self._buffers
        model = self.model
        if self._checked < len(b.names):
            self._warn_unseen(b.names[self._checked:])
            self._checked = len(b.names)
        scores = model.score_windows(w)
        out.windows += len(w)
        self.metrics.windows.inc(len(w))
        if self.on_windows is not None:
            self.on_windows(w, scores)
        t = w.end_ns // self.step_ns
        order = np.lexsort((t, codes))  # per entity, in time order
        if not (order == np.arange(len(order))).all():
            w, codes, scores, t = w.take(order), codes[order], scores[order], t[order]
        b.last_score[codes] = scores  # in time order per entity: the last one wins
        b.remember_scores(codes, t, scores)
        # Before the builder: the events it opens now are grouped with these windows' scores.
        self._incidents().add_scores(b.names, codes, w.end_ns, scores)
        self._score_snapshot = (list(b.names), b.last_score.copy())
        push = self.gate.select(w.entity, w.end_ns, scores)
        if self.book.firing:
            # An entity with a firing alert is always followed: were its event's state lost
            # (a restart without it), its later windows still resolve the alert.
            firing = [b.index[n] for n in {f["entity"] for f in self.book.firing.values()}
                      if n in b.index]
            push |= np.isin(codes, firing)
        if not push.any():
            return
        if not push.all():
            w, scores = w.take(push), scores[push]
        closed = self.builder.push(w.entity, w.end_ns, scores, model.payload(w))
        self._closed(closed, now, out)
        self._opened(sorted({str(e) for e in w.entity}), now, out)
