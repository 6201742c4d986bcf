"""The synthetic corpus' actions: parameters, procedural animation and captions.

Every action animates a :class:`~lavimo.dataset.synth.rig.Rig` from a :class:`MotionParams` (side, direction,
speed, amplitude, repetitions) and writes at least three paraphrased captions that state those modifiers.
Angles are degrees in SMPL's rest frame (see :mod:`lavimo.dataset.synth.rig`); times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from lavimo.dataset.synth.rig import Rig, bump, smoothstep, standing

SPEED = {"slow": 0.75, "normal": 1.0, "fast": 1.3}
AMP = {"small": 0.7, "normal": 1.0, "large": 1.25}
NUM = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
       "twelve", "thirteen", "fourteen", "fifteen", "sixteen"]


@dataclass(frozen=True)
class MotionParams:
    """Modifiers of one synthetic motion (``None`` where an action has no such modifier)."""

    action: str
    side: str | None = None  # "left" | "right" | "both"
    direction: str | None = None  # "forward" | "backward" | "sideways" | "in place" | "left" | "right" |
    # "clockwise" | "counterclockwise"
    speed: str = "normal"  # "slow" | "normal" | "fast"
    amplitude: str = "normal"  # "small" | "normal" | "large"
    reps: int = 1

    def to_dict(self) -> dict:
        return {"action": self.action, "side": self.side, "direction": self.direction, "speed": self.speed,
                "amplitude": self.amplitude, "reps": self.reps}


@dataclass(frozen=True)
class ActionSpec:
    """An action: allowed modifiers, timing (seconds at normal speed) and its animation/captions."""

    name: str
    animate: Callable[[Rig, MotionParams, float, np.random.Generator], None]
    captions: Callable[[MotionParams], list[str]]
    reps: tuple[int, int]
    period: float  # seconds per repetition at normal speed
    sides: tuple = (None,)
    directions: tuple = (None,)
    speeds: tuple = ("slow", "normal", "fast")
    amplitudes: tuple = ("normal",)
    lead: float = 0.5
    tail: float = 0.5
    unit: str = "times"  # what reps count (for --list-actions)

    def period_for(self, p: MotionParams) -> float:
        return self.period / SPEED[p.speed]

    def duration(self, p: MotionParams) -> float:
        return self.lead + p.reps * self.period_for(p) + self.tail


# -- words ---------------------------------------------------------------------------------------------------


def times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{NUM[n] if n < len(NUM) else n} times")


def adv(p: MotionParams, normal: str = "") -> str:
    return {"slow": "slowly", "fast": "quickly", "normal": normal}[p.speed]


def pace(p: MotionParams) -> str:
    return {"slow": "at a slow pace", "fast": "at a fast pace", "normal": "at a normal pace"}[p.speed]


def clean(s: str) -> str:
    return " ".join(s.split()).replace(" ,", ",").replace(" .", ".")


def _caps(*templates: str) -> Callable[[MotionParams], list[str]]:
    """Caption function from format templates ({side}, {other}, {dir}, {times}, {n}, {adv}, {pace}, ...)."""

    def fn(p: MotionParams) -> list[str]:
        side = p.side or ""
        words = {
            "side": side, "other": {"left": "right", "right": "left"}.get(side, ""),
            "dir": p.direction or "", "times": times(p.reps), "n": NUM[p.reps] if p.reps < len(NUM) else p.reps,
            "adv": adv(p), "pace": pace(p), "speed": {"slow": "slow", "fast": "fast", "normal": "steady"}[p.speed],
            "amp": {"small": "small", "normal": "", "large": "big"}[p.amplitude],
            "hands": "both hands" if side == "both" else f"the {side} hand",
            "arms": "both arms" if side == "both" else f"the {side} arm",
            "its_arms": "its arms" if side == "both" else f"its {side} arm",
            "rot": {"clockwise": "clockwise", "counterclockwise": "counterclockwise"}.get(p.direction or "", ""),
            "turnside": {"clockwise": "right", "counterclockwise": "left"}.get(p.direction or "", ""),
        }
        return [clean(t.format(**words)) for t in templates]

    return fn


# -- building blocks -----------------------------------------------------------------------------------------


def _gait(rig: Rig, start: float, step_t: float, n: int, hip: float, knee_swing: float, knee_stance: float,
          arm: float, reverse: bool = False, elbow: float = 0.0, hip_lead: float = 0.0) -> np.ndarray:
    """Alternating steps (left first); returns the step progress s in [0, n].

    ``hip_lead`` (radians) advances the hip swing relative to the knee, so the swinging foot already moves
    backward relative to the body when it lands (as in running).
    """
    s = np.clip((rig.t - start) / step_t, 0, n)
    env = smoothstep(s / 0.6) * smoothstep((n - s) / 0.6)
    phi = -np.pi / 2 + np.pi * ((n - s) if reverse else s)
    for side, ph in (("l", phi), ("r", phi + np.pi)):
        swing = np.maximum(0.0, np.cos(ph)) ** 2
        behind = np.maximum(0.0, -np.sin(ph)) ** 3 * (1 - swing)
        rig.add(f"{side}_hip_flex", env * hip * np.sin(ph + (-hip_lead if reverse else hip_lead)))
        rig.add(f"{side}_knee", env * (knee_swing * swing + knee_stance * (1 - swing)))
        rig.add(f"{side}_ankle", env * (14 * behind - 8 * swing))
        rig.add(f"{side}_toe", env * 18 * behind)
        rig.add(f"{side}_sh_flex", -env * arm * np.sin(ph))
        rig.add(f"{side}_elbow", env * (elbow + 0.4 * arm * np.maximum(0, -np.sin(ph))))
    rig.add("spine_twist", env * 0.25 * hip * np.sin(phi))
    rig.add("yaw", -env * 0.12 * hip * np.sin(phi))
    rig.travel = (-1.0, 0.0) if reverse else (1.0, 0.0)
    rig.lock_window = 0.1
    return s


def _march(rig: Rig, start: float, step_t: float, n: int, hip: float, knee: float, arm: float) -> np.ndarray:
    """Steps in place (alternating knee lifts, left first); returns the step progress."""
    s = np.clip((rig.t - start) / step_t, 0, n)
    env = smoothstep(s / 0.5) * smoothstep((n - s) / 0.5)
    phi = -np.pi / 2 + np.pi * s
    for side, ph in (("l", phi), ("r", phi + np.pi)):
        lift = np.maximum(0.0, np.cos(ph)) ** 2 * env
        rig.add(f"{side}_hip_flex", hip * lift)
        rig.add(f"{side}_knee", knee * lift)
        rig.add(f"{side}_ankle", 0.2 * hip * lift)
        rig.add(f"{side}_sh_flex", -arm * env * np.sin(ph))
        rig.add(f"{side}_elbow", 0.5 * arm * env * np.maximum(0, -np.sin(ph)))
    return s


def _squat_legs(rig: Rig, k: np.ndarray, thigh: float, shin: float, trunk: float) -> None:
    """Both legs bent with flat feet: thigh/shin angles from vertical and trunk lean, scaled by k (T,)."""
    rig.add("pitch", k * trunk)
    for s in ("l", "r"):
        rig.add(f"{s}_hip_flex", k * (thigh + trunk))
        rig.add(f"{s}_knee", k * (thigh + shin))
        rig.add(f"{s}_ankle", -k * shin)


def _ramp(rig: Rig, start: float, length: float) -> np.ndarray:
    return smoothstep(rig.window(start, length))


def _hold(rig: Rig, start: float, up: float, hold: float, down: float) -> np.ndarray:
    """0 -> 1 over ``up`` s, stays ``hold`` s, back to 0 over ``down`` s."""
    return _ramp(rig, start, up) * (1 - _ramp(rig, start + up + hold, down))


def _rep_hold(rig: Rig, start: float, period: float, n: int, a: float = 0.35, b: float = 0.65) -> np.ndarray:
    """Per repetition: rise over [0, a], hold over [a, b], fall over [b, 1] of the period."""
    u, k = rig.reps(start, period, n)
    return np.where(k >= 0, smoothstep(u / a) * (1 - smoothstep((u - b) / (1 - b))), 0.0)


def _keys(u: np.ndarray, knots: tuple[float, ...], values: tuple[float, ...]) -> np.ndarray:
    """Piecewise smoothstep interpolation of ``values`` at ``knots`` (u, knots in [0, 1])."""
    out = np.full_like(u, float(values[0]))
    for (k0, k1), (v0, v1) in zip(zip(knots[:-1], knots[1:]), zip(values[:-1], values[1:])):
        out = np.where(u >= k0, v0 + (v1 - v0) * smoothstep((u - k0) / max(k1 - k0, 1e-9)), out)
    return out


# -- actions: locomotion -------------------------------------------------------------------------------------


def walk(rig, p, T, rng):
    a = AMP[p.amplitude]
    step = 0.56 / SPEED[p.speed] ** 0.5
    _gait(rig, ACTIONS["walk"].lead, step, p.reps, 24 * a * SPEED[p.speed] ** 0.3, 58, 6, 16 * a,
          reverse=p.direction == "backward")
    rig.add("pitch", 3 if p.direction == "forward" else -2)


def walk_circle(rig, p, T, rng):
    step = 0.58 / SPEED[p.speed] ** 0.5
    s = _gait(rig, ACTIONS["walk_circle"].lead, step, p.reps, 22, 58, 6, 14)
    sign = 1 if p.direction == "counterclockwise" else -1
    rig.add("yaw", sign * 360.0 * smoothstep(s / p.reps) if p.reps else 0)
    rig.add("roll", sign * 3 * smoothstep(s / 0.6) * smoothstep((p.reps - s) / 0.6))


def run(rig, p, T, rng):
    step = 0.36 / SPEED[p.speed] ** 0.5
    s = _gait(rig, ACTIONS["run"].lead, step, p.reps, 38 * SPEED[p.speed] ** 0.3, 95, 22, 32, elbow=70)
    env = smoothstep(s / 0.8) * smoothstep((p.reps - s) / 0.8)
    rig.add("pitch", 9 * env)
    # a short flight between steps
    frac = s - np.floor(s)
    fly = env * bump((frac - 0.75) / 0.5) + env * bump((frac + 0.25) / 0.5) * (s > 0.5)
    rig.lift = 0.05 * fly
    rig.contact = 1 - smoothstep(fly / 0.3)
    rig.auto_flight = True
    rig.lock_window = 0.0


def side_step(rig, p, T, rng):
    """Side steps towards p.direction: the leading leg steps out, the other one follows.

    Both hips abduct together so both feet reach the floor; the foot lock then carries the body over.
    """
    a = AMP[p.amplitude]
    period = ACTIONS["side_step"].period_for(p)
    lead, other = rig.sides(p.direction)
    u, k = rig.reps(ACTIONS["side_step"].lead, period, p.reps)
    on = k >= 0
    out = np.where(on, _keys(u, (0.0, 0.45, 0.55, 1.0), (0, 1, 1, 0)), 0.0)
    lift_lead = np.where(on, bump(u / 0.45), 0.0)
    lift_other = np.where(on, bump((u - 0.55) / 0.45), 0.0)
    for s in (lead, other):
        rig.add(f"{s}_hip_abd", 11 * a * out)
    for s, lift in ((lead, lift_lead), (other, lift_other)):
        rig.add(f"{s}_hip_flex", 25 * lift)
        rig.add(f"{s}_knee", 50 * lift)
        rig.add(f"{s}_ankle", -25 * lift)  # sole parallel to the floor
    for s in ("l", "r"):
        rig.add(f"{s}_sh_abd", 6 * out)


def march(rig, p, T, rng):
    a = AMP[p.amplitude]
    _march(rig, ACTIONS["march"].lead, ACTIONS["march"].period_for(p), p.reps, 60 * a, 75 * a, 30)
    for s in ("l", "r"):
        rig.add(f"{s}_elbow", 60)


def turn_around(rig, p, T, rng):
    spec = ACTIONS["turn_around"]
    dur = spec.period_for(p)
    n = 4
    s = _march(rig, spec.lead, dur / n, n, 12, 25, 4)
    sign = 1 if p.direction == "counterclockwise" else -1
    rig.add("yaw", sign * 180.0 * smoothstep(s / n))
    rig.add("neck_twist", sign * 20 * bump(s / n))


def spin(rig, p, T, rng):
    spec = ACTIONS["spin"]
    per = spec.period_for(p)
    n = 3 * p.reps
    s = _march(rig, spec.lead, per * p.reps / n, n, 14, 28, 0)
    sign = 1 if p.direction == "counterclockwise" else -1
    prog = np.clip(s / n, 0, 1)
    # constant turning speed with eased ends
    ang = 360.0 * p.reps * (prog - np.sin(2 * np.pi * prog) / (2 * np.pi))
    rig.add("yaw", sign * ang)
    env = smoothstep(s / 0.8) * smoothstep((n - s) / 0.8)
    for sd in ("l", "r"):
        rig.add(f"{sd}_sh_abd", 45 * env)
        rig.add(f"{sd}_elbow", 20 * env)


# -- actions: jumps ------------------------------------------------------------------------------------------


def _jump_profile(rig: Rig, start: float, period: float, n: int, height: float, crouch: float,
                  flight_v: tuple[float, float] = (0.0, 0.0), one_leg: str | None = None) -> np.ndarray:
    """Crouch, take off, fly (ballistic ``height`` metres), land and recover, ``n`` times."""
    g = 9.81
    t_fly = 2 * np.sqrt(2 * height / g)
    u, k = rig.reps(start, period, n)
    on = k >= 0
    tu = u * period  # seconds into the repetition
    t_off = 0.45 * period - t_fly / 2
    t_land = t_off + t_fly
    pre = np.where(on & (tu < t_off), bump(tu / t_off), 0.0)  # crouch, extended again at take-off
    post = np.where(on & (tu >= t_land), bump((tu - t_land) / max(period - t_land, 1e-3)), 0.0)  # landing
    air = on & (tu >= t_off) & (tu < t_land)
    ta = np.where(air, tu - t_off, 0.0)
    rig.lift = np.where(air, np.maximum(0.0, ta * (g * t_fly / 2) - 0.5 * g * ta ** 2), 0.0)
    rig.contact = np.where(air, 0.0, 1.0)
    rig.flight_v[:, 0] = np.where(air, flight_v[0], 0.0)
    rig.flight_v[:, 1] = np.where(air, flight_v[1], 0.0)
    tuck = np.where(air, bump(ta / t_fly), 0.0)
    push = np.where(on, bump((tu - (t_off - 0.2)) / (t_fly + 0.3)), 0.0)  # toes down around the flight
    bend = 0.85 * pre + 0.8 * post
    legs = ("l", "r") if one_leg is None else (one_leg,)
    if one_leg is None:
        _squat_legs(rig, bend, 45 * crouch, 30 * crouch, 18 * crouch)
        for s in legs:
            rig.add(f"{s}_hip_flex", 25 * tuck)
            rig.add(f"{s}_knee", 40 * tuck)
            rig.add(f"{s}_ankle", 25 * push)
    else:
        rig.add("pitch", 10 * crouch * bend)
        rig.add(f"{one_leg}_hip_flex", bend * (30 * crouch + 10 * crouch))
        rig.add(f"{one_leg}_knee", bend * 55 * crouch)
        rig.add(f"{one_leg}_ankle", -bend * 25 * crouch + 20 * np.where(air, 1.0, 0.0) * bump(ta / t_fly))
    # arms swing back while crouching, up at take-off
    for s in ("l", "r"):
        rig.add(f"{s}_sh_flex", -35 * pre + 70 * tuck + 20 * post)
        rig.add(f"{s}_elbow", 25 * (pre + tuck))
    return np.where(on, 1.0, 0.0)


def jump(rig, p, T, rng):
    spec = ACTIONS["jump"]
    a = AMP[p.amplitude]
    h = 0.22 * a
    t_fly = 2 * np.sqrt(2 * h / 9.81)
    v = {"forward": 0.55 * a / t_fly, "backward": -0.3 * a / t_fly}.get(p.direction, 0.0)
    _jump_profile(rig, spec.lead, spec.period_for(p), p.reps, h, 1.0 * a, (v, 0.0))


def hop(rig, p, T, rng):
    spec = ACTIONS["hop"]
    stand, free = rig.sides(p.side)
    hold = _ramp(rig, 0.1, spec.lead - 0.1) * (1 - _ramp(rig, spec.lead + p.reps * spec.period_for(p), 0.4))
    rig.add(f"{free}_hip_flex", 25 * hold)
    rig.add(f"{free}_knee", 80 * hold)
    rig.add(f"{free}_ankle", 20 * hold)
    rig.add("roll", (4 if stand == "l" else -4) * hold)
    for s in ("l", "r"):
        rig.add(f"{s}_sh_abd", 20 * hold)
        rig.add(f"{s}_elbow", 30 * hold)
    h = 0.1 * AMP[p.amplitude]
    v = 0.3 / (2 * np.sqrt(2 * h / 9.81)) if p.direction == "forward" else 0.0
    _jump_profile(rig, spec.lead, spec.period_for(p), p.reps, h, 0.8, (v, 0.0), one_leg=stand)


def jumping_jacks(rig, p, T, rng):
    spec = ACTIONS["jumping_jacks"]
    per = spec.period_for(p)
    h = 0.07
    t_fly = 2 * np.sqrt(2 * h / 9.81)
    u, k = rig.reps(spec.lead, per, p.reps)
    on = k >= 0
    # two hops per repetition: out at u=0.25, in at u=0.75
    lift = np.zeros(rig.T)
    for c in (0.25, 0.75):
        tu = (u - c) * per
        air = on & (np.abs(tu) < t_fly / 2)
        ta = tu + t_fly / 2
        lift = np.where(air, np.maximum(0.0, ta * 9.81 * t_fly / 2 - 0.5 * 9.81 * ta ** 2), lift)
    rig.lift = lift
    rig.contact = np.where(lift > 0, 0.0, 1.0)
    spread = np.where(on, smoothstep((u - 0.25 + t_fly / per / 2) / (t_fly / per))
                      * (1 - smoothstep((u - 0.75 + t_fly / per / 2) / (t_fly / per))), 0.0)
    arms = np.where(on, bump(u), 0.0)
    dip = np.where(on, bump((u - 0.3) / 0.4) * 0.5 + bump(u / 0.2) * 0.3 + bump((u - 0.8) / 0.2) * 0.3, 0.0)
    _squat_legs(rig, dip, 20, 15, 5)
    for s in ("l", "r"):
        rig.add(f"{s}_hip_abd", 16 * AMP[p.amplitude] * spread)
        rig.add(f"{s}_sh_abd", 150 * AMP[p.amplitude] ** 0.3 * arms)
        rig.add(f"{s}_ankle", 15 * lift / h)


# -- actions: legs -------------------------------------------------------------------------------------------


def kick(rig, p, T, rng):
    spec = ACTIONS["kick"]
    a = AMP[p.amplitude]
    k_, o = rig.sides(p.side)
    per = spec.period_for(p)
    u, k = rig.reps(spec.lead, per, p.reps)
    on = k >= 0
    chamber = np.where(on, bump(u / 0.5), 0.0)
    strike = np.where(on, bump((u - 0.2) / 0.5), 0.0)
    if p.direction == "sideways":
        rig.add(f"{k_}_hip_abd", 55 * a * strike)
        rig.add(f"{k_}_hip_flex", 15 * chamber)
        rig.add(f"{k_}_knee", 70 * chamber * (1 - strike) + 10 * strike)
        rig.add("roll", (-14 if k_ == "l" else 14) * a * strike)
        rig.add(f"{k_}_hip_twist", -20 * strike)  # side channels use the left convention (mirrored for right)
    else:
        rig.add(f"{k_}_hip_flex", -15 * chamber * (1 - strike) + 75 * a * strike)
        rig.add(f"{k_}_knee", 75 * chamber * (1 - strike) + 8 * strike)
        rig.add(f"{k_}_ankle", 25 * strike)
        rig.add("pitch", -8 * a * strike)
    rig.add(f"{o}_knee", 12 * chamber)
    rig.add(f"{o}_ankle", -8 * chamber)
    for s in ("l", "r"):
        rig.add(f"{s}_sh_abd", 25 * strike)
        rig.add(f"{s}_elbow", 40 * chamber)


def stomp(rig, p, T, rng):
    spec = ACTIONS["stomp"]
    k_, _ = rig.sides(p.side)
    per = spec.period_for(p)
    u, k = rig.reps(spec.lead, per, p.reps)
    on = k >= 0
    up = np.where(on, smoothstep(u / 0.45) * (1 - smoothstep((u - 0.5) / 0.12)), 0.0)
    a = AMP[p.amplitude]
    rig.add(f"{k_}_hip_flex", 55 * a * up)
    rig.add(f"{k_}_knee", 75 * a * up)
    rig.add("pitch", 4 * up)
    for s in ("l", "r"):
        rig.add(f"{s}_sh_abd", 10 * up)
        rig.add(f"{s}_elbow", 30 * up)


def leg_swing(rig, p, T, rng):
    spec = ACTIONS["leg_swing"]
    k_, o = rig.sides(p.side)
    per = spec.period_for(p)
    s = np.clip((rig.t - spec.lead) / per, 0, p.reps)
    env = smoothstep(s / 0.5) * smoothstep((p.reps - s) / 0.5)
    hold = _hold(rig, 0.1, spec.lead - 0.1, p.reps * per, 0.4)
    osc = np.sin(2 * np.pi * s)
    a = AMP[p.amplitude]
    rig.add(f"{k_}_knee", 12 * hold)
    rig.add(f"{k_}_hip_flex", 8 * hold)
    if p.direction == "sideways":
        rig.add(f"{k_}_hip_abd", env * 20 * a * (osc + 0.9))
        rig.add("roll", (-6 if k_ == "l" else 6) * env * (osc + 1) / 2)
    else:
        rig.add(f"{k_}_hip_flex", env * (15 + 35 * a * osc))
    rig.add(f"{o}_knee", 6 * hold)
    rig.add(f"{o}_sh_abd", 40 * hold)
    rig.add(f"{k_}_sh_abd", 20 * hold)


def lunge(rig, p, T, rng):
    """Step forward, sink until the back knee nears the floor, rise and step back (keyframed)."""
    spec = ACTIONS["lunge"]
    f, b = rig.sides(p.side)
    per = spec.period_for(p)
    u, k = rig.reps(spec.lead, per, p.reps)
    on = k >= 0
    a = AMP[p.amplitude]
    kn = (0.0, 0.22, 0.45, 0.55, 0.78, 1.0)

    def key(*vals):
        return np.where(on, _keys(u, kn, vals), 0.0)

    lift = np.where(on, bump(u / 0.22) + bump((u - 0.78) / 0.22), 0.0)
    rig.add(f"{f}_hip_flex", key(0, 32, 32 + 33 * a, 32 + 33 * a, 32, 0) + 15 * lift)
    rig.add(f"{f}_knee", key(0, 5, 5 + 70 * a, 5 + 70 * a, 5, 0) + 35 * lift)
    rig.add(f"{f}_ankle", key(0, 0, -10 * a, -10 * a, 0, 0))
    rig.add(f"{b}_hip_flex", key(0, -22, -22 + 12 * a, -22 + 12 * a, -22, 0))
    rig.add(f"{b}_knee", key(0, 5, 5 + 60 * a, 5 + 60 * a, 5, 0))
    rig.add(f"{b}_ankle", key(0, 15, 15 - 15 * a, 15 - 15 * a, 15, 0))
    rig.add(f"{b}_toe", key(0, 25, 25 + 20 * a, 25 + 20 * a, 25, 0))
    hold = key(0, 1, 1, 1, 1, 0)
    for s in ("l", "r"):
        rig.add(f"{s}_sh_abd", 12 * hold)
        rig.add(f"{s}_elbow", 30 * hold)


def squat(rig, p, T, rng):
    spec = ACTIONS["squat"]
    a = AMP[p.amplitude]
    kk = _rep_hold(rig, spec.lead, spec.period_for(p), p.reps, 0.4, 0.55)
    _squat_legs(rig, kk, 75 * a ** 0.8, 32 * a ** 0.8, 28 * a)
    for s in ("l", "r"):
        rig.add(f"{s}_sh_flex", 80 * kk)
        rig.add(f"{s}_sh_abd", -5 * kk)
        rig.add(f"{s}_elbow", -8 * kk)


def _sit(rig, k):
    """Sitting on a chair (k = 0 standing .. 1 seated); leans forward half way."""
    lean = np.sin(np.pi * np.clip(k, 0, 1)) ** 2
    rig.add("pitch", 30 * lean + 8 * k)
    for s in ("l", "r"):
        rig.add(f"{s}_hip_flex", 85 * k + 30 * lean + 8 * k)
        rig.add(f"{s}_knee", 90 * k)
        rig.add(f"{s}_ankle", -8 * k)
        rig.add(f"{s}_sh_flex", 25 * lean + 20 * k)
        rig.add(f"{s}_elbow", 30 * k)
    rig.add("spine_flex", -6 * k)


def sit_down(rig, p, T, rng):
    spec = ACTIONS["sit_down"]
    _sit(rig, _ramp(rig, spec.lead, spec.period_for(p)))


def stand_up(rig, p, T, rng):
    spec = ACTIONS["stand_up"]
    _sit(rig, 1 - _ramp(rig, spec.lead, spec.period_for(p)))


def balance(rig, p, T, rng):
    spec = ACTIONS["balance"]
    st, fr = rig.sides(p.side)
    k = _hold(rig, spec.lead - 0.6, 0.8, p.reps * spec.period_for(p), 0.8)
    a = AMP[p.amplitude]
    rig.add(f"{fr}_hip_flex", 60 * a * k)
    rig.add(f"{fr}_knee", 85 * k)
    rig.add(f"{fr}_ankle", 15 * k)
    rig.add(f"{st}_knee", 5 * k)
    sway = 2.5 * np.sin(2 * np.pi * rig.t / 1.7) * k
    rig.add("roll", (4 if st == "l" else -4) * k + sway)
    for s in ("l", "r"):
        rig.add(f"{s}_sh_abd", 70 * k + sway)
        rig.add(f"{s}_elbow", -10 * k)


# -- actions: upper body -------------------------------------------------------------------------------------


def bow(rig, p, T, rng):
    spec = ACTIONS["bow"]
    a = AMP[p.amplitude]
    kk = _rep_hold(rig, spec.lead, spec.period_for(p), p.reps, 0.35, 0.6)
    ang = 35 * a
    rig.add("pitch", ang * kk)
    rig.add("spine_flex", 12 * a * kk)
    rig.add("neck_flex", 10 * kk)
    for s in ("l", "r"):
        rig.add(f"{s}_hip_flex", ang * kk)
        rig.add(f"{s}_ankle", 5 * kk)
        rig.add(f"{s}_sh_flex", (ang + 12 * a) * 0.9 * kk)


def toe_touch(rig, p, T, rng):
    spec = ACTIONS["toe_touch"]
    kk = _rep_hold(rig, spec.lead, spec.period_for(p), p.reps, 0.4, 0.6)
    rig.add("pitch", 65 * kk)
    rig.add("spine_flex", 40 * kk)
    rig.add("neck_flex", 5 * kk)
    for s in ("l", "r"):
        rig.add(f"{s}_hip_flex", 62 * kk)
        rig.add(f"{s}_knee", 6 * kk)
        rig.add(f"{s}_ankle", 8 * kk)
        rig.add(f"{s}_sh_flex", 95 * kk)
        rig.add(f"{s}_sh_abd", -4 * kk)
        rig.add(f"{s}_elbow", -10 * kk)


def torso_twist(rig, p, T, rng):
    spec = ACTIONS["torso_twist"]
    per = spec.period_for(p)
    s = np.clip((rig.t - spec.lead) / per, 0, p.reps)
    env = smoothstep(s / 0.3) * smoothstep((p.reps - s) / 0.3)
    hold = _hold(rig, 0.1, spec.lead - 0.1, p.reps * per, 0.4)
    rig.add("spine_twist", 45 * AMP[p.amplitude] * env * np.sin(2 * np.pi * s))
    rig.add("neck_twist", 15 * AMP[p.amplitude] * env * np.sin(2 * np.pi * s))
    for sd in ("l", "r"):
        rig.add(f"{sd}_sh_abd", 75 * hold)
        rig.add(f"{sd}_elbow", 90 * hold)
        rig.add(f"{sd}_sh_flex", 10 * hold)


def punch(rig, p, T, rng):
    spec = ACTIONS["punch"]
    per = spec.period_for(p)
    guard = _hold(rig, 0.1, spec.lead - 0.1, p.reps * per, 0.45)
    act = p.side
    u, k = rig.reps(spec.lead, per, p.reps)
    hit = np.where(k >= 0, bump(u / 0.8) ** 0.7, 0.0)
    rest = np.array([0.16, -0.38, 0.06])
    guard_t = np.array([0.10, 0.12, 0.22])
    reach = np.array([-0.03, 0.14, 0.64]) if AMP[p.amplitude] >= 1 else np.array([0.0, 0.12, 0.52])
    sign = 1 if act == "left" else -1
    for s in ("l", "r"):
        g = guard[:, None]
        tgt = rest + (guard_t - rest) * g
        pole = np.array([0.6, -1.0, -0.3])
        if (s == "l") == (act == "left"):
            tgt = tgt + (reach - guard_t) * hit[:, None]
            pole = np.array([0.8, -1.0, 0.0])
        rig.arm_ik[s] = (tgt, np.broadcast_to(pole, tgt.shape))
        rig.add(f"{s}_curl", 0.8 * guard)
        rig.add(f"{s}_knee", 12 * guard)
        rig.add(f"{s}_ankle", -6 * guard)
        rig.add(f"{s}_hip_flex", 8 * guard)
    rig.add("pitch", 6 * guard)
    rig.add("spine_twist", -sign * 22 * hit)
    rig.add("yaw", -sign * 6 * hit)


def wave(rig, p, T, rng):
    spec = ACTIONS["wave"]
    per = spec.period_for(p)
    up = _hold(rig, 0.1, spec.lead - 0.1, p.reps * per, 0.5)
    s = np.clip((rig.t - spec.lead) / per, 0, p.reps)
    osc = np.sin(2 * np.pi * s) * smoothstep(s / 0.25) * smoothstep((p.reps - s) / 0.25)
    high = p.amplitude == "large"
    for sd in (("l", "r") if p.side == "both" else (rig.sides(p.side)[0],)):
        rig.add(f"{sd}_sh_abd", (130 if high else 95) * up)
        rig.add(f"{sd}_sh_flex", 15 * up)
        rig.add(f"{sd}_sh_ext", 75 * up)
        rig.add(f"{sd}_elbow", (45 if high else 85) * up + 28 * osc)
        rig.add(f"{sd}_curl", -0.2 * up)
    if p.side != "both":
        rig.add("neck_twist", (12 if p.side == "left" else -12) * up)


def clap(rig, p, T, rng):
    spec = ACTIONS["clap"]
    per = spec.period_for(p)
    up = _hold(rig, 0.1, spec.lead - 0.1, p.reps * per, 0.5)
    u, k = rig.reps(spec.lead, per, p.reps)
    apart = np.where(k >= 0, bump(u), 0.0) * 0.5 * (1 + AMP[p.amplitude]) / 2 + (1 - up) * 0.0
    rest = np.array([0.17, -0.37, 0.06])
    together = np.array([0.03, 0.0, 0.34])
    for s in ("l", "r"):
        tgt = rest + (together - rest) * up[:, None] + np.array([0.22, -0.02, -0.06]) * (apart * up)[:, None]
        rig.arm_ik[s] = (tgt, np.broadcast_to(np.array([1.0, -0.9, -0.2]), tgt.shape))
        rig.add(f"{s}_curl", -0.2 * up)


def raise_arms(rig, p, T, rng):
    spec = ACTIONS["raise_arms"]
    a = AMP[p.amplitude]
    kk = _rep_hold(rig, spec.lead, spec.period_for(p), p.reps, 0.35, 0.65)
    ang = 165 if a > 1 else (150 if a == 1 else 90)
    for sd in (("l", "r") if p.side == "both" else (rig.sides(p.side)[0],)):
        if p.direction == "sideways":
            rig.add(f"{sd}_sh_abd", ang * kk)
            rig.add(f"{sd}_sh_ext", min(ang, 90) * kk)
        else:
            rig.add(f"{sd}_sh_flex", ang * kk)
        rig.add(f"{sd}_elbow", -8 * kk)
        rig.add(f"{sd}_curl", -0.2 * kk)


def arm_circles(rig, p, T, rng):
    spec = ACTIONS["arm_circles"]
    per = spec.period_for(p)
    up = _hold(rig, 0.1, spec.lead - 0.1, p.reps * per, 0.5)
    s = np.clip((rig.t - spec.lead) / per, 0, p.reps)
    env = smoothstep(s / 0.3) * smoothstep((p.reps - s) / 0.3)
    r = 30 * AMP[p.amplitude]
    sign = 1 if p.direction == "forward" else -1
    ps = 2 * np.pi * s
    for sd in (("l", "r") if p.side == "both" else (rig.sides(p.side)[0],)):
        rig.add(f"{sd}_sh_abd", 80 * up + env * r * np.cos(ps))
        rig.add(f"{sd}_sh_flex", env * r * sign * np.sin(ps))
        rig.add(f"{sd}_elbow", -8 * up)


def throw(rig, p, T, rng):
    spec = ACTIONS["throw"]
    t_, o = rig.sides(p.side)
    per = spec.period_for(p)
    u, k = rig.reps(spec.lead, per, p.reps)
    on = k >= 0
    wind = np.where(on, smoothstep(u / 0.45) * (1 - smoothstep((u - 0.45) / 0.15)), 0.0)
    rel = np.where(on, bump((u - 0.45) / 0.45), 0.0)
    a = AMP[p.amplitude]
    sign = 1 if t_ == "l" else -1
    rig.add(f"{t_}_sh_abd", 95 * wind + 60 * rel)
    rig.add(f"{t_}_sh_ext", 80 * wind - 10 * rel)
    rig.add(f"{t_}_elbow", 95 * wind + 10 * rel)
    rig.add(f"{t_}_sh_flex", -15 * wind + 70 * rel)
    rig.add(f"{t_}_curl", 0.6 * wind)
    rig.add(f"{o}_sh_flex", 50 * wind + 10 * rel)
    rig.add(f"{o}_sh_abd", 20 * wind)
    rig.add("spine_twist", sign * (30 * wind - 30 * rel) * a)
    rig.add("pitch", -4 * wind + 10 * rel)
    rig.add(f"{o}_hip_flex", 20 * rel)
    rig.add(f"{t_}_knee", 10 * rel)


def stretch(rig, p, T, rng):
    spec = ACTIONS["stretch"]
    per = spec.period_for(p)
    up = _hold(rig, 0.1, spec.lead - 0.1, p.reps * per, 0.6)
    lean = _rep_hold(rig, spec.lead, per, p.reps, 0.4, 0.6)
    sign = 1 if p.direction == "left" else -1
    a = AMP[p.amplitude]
    for sd in ("l", "r"):
        rig.add(f"{sd}_sh_abd", 165 * up)
        rig.add(f"{sd}_sh_ext", 90 * up)
        rig.add(f"{sd}_elbow", 5 * up)
    rig.add("spine_side", sign * 30 * a * lean)
    rig.add("roll", sign * 6 * a * lean)
    rig.add("neck_flex", -5 * up)


# -- the registry --------------------------------------------------------------------------------------------

LR = ("left", "right")
LRB = ("left", "right", "both")
ROT = ("clockwise", "counterclockwise")

_SPECS = [
    ActionSpec("walk", walk, _caps(
        "a person walks {dir} {n} steps {adv}.",
        "someone takes {n} steps {dir} {pace}.",
        "the person is walking {dir} with {n} {speed} steps.",
        "a human walks {dir} {adv}, taking {n} steps."),
        reps=(4, 10), period=0.56, directions=("forward", "backward"), amplitudes=("small", "normal", "large"),
        unit="steps"),
    ActionSpec("walk_circle", walk_circle, _caps(
        "a person walks in a full circle {rot}.",
        "someone walks around in a circle going {rot}, {adv} turning to the {turnside}.",
        "the person walks {rot} in a circle {pace}, taking {n} steps."),
        reps=(8, 12), period=0.58, directions=ROT, speeds=("normal", "fast"), unit="steps"),
    ActionSpec("run", run, _caps(
        "a person runs forward {n} steps {adv}.",
        "someone jogs forward {pace}, taking {n} strides.",
        "the person is running forward with {n} {speed} steps."),
        reps=(6, 14), period=0.36, directions=("forward",), unit="steps"),
    ActionSpec("side_step", side_step, _caps(
        "a person side steps to the {dir} {times}.",
        "someone steps sideways to the {dir} {n} times {pace}.",
        "the person shuffles {adv} to the {dir} with {n} side steps."),
        reps=(2, 5), period=0.9, directions=LR, amplitudes=("small", "normal", "large"), unit="steps"),
    ActionSpec("march", march, _caps(
        "a person marches in place lifting the knees {n} times {adv}.",
        "someone marches on the spot with {n} high knee steps {pace}.",
        "the person is marching in place, raising each knee in turn, {n} steps."),
        reps=(6, 12), period=0.55, directions=("in place",), amplitudes=("small", "normal", "large"), unit="steps"),
    ActionSpec("turn_around", turn_around, _caps(
        "a person turns around {rot}.",
        "someone turns around to the {turnside}, {rot}, {adv}.",
        "the person turns {rot} to face the opposite direction {pace}."),
        reps=(1, 1), period=2.0, directions=ROT, unit="turns"),
    ActionSpec("spin", spin, _caps(
        "a person spins around {rot} {times}.",
        "someone twirls {rot} in place, making {n} full turns {adv}.",
        "the person spins {times} {rot} with arms out {pace}."),
        reps=(1, 3), period=1.6, directions=ROT, unit="turns"),
    ActionSpec("jump", jump, _caps(
        "a person jumps {dir} {times}.",
        "someone jumps {dir} with both feet {times} {adv}.",
        "the person does {n} {amp} jumps {dir} {pace}."),
        reps=(1, 4), period=1.4, directions=("forward", "backward", "in place"),
        amplitudes=("small", "normal", "large"), unit="jumps"),
    ActionSpec("hop", hop, _caps(
        "a person hops on the {side} leg {times} {dir}.",
        "someone hops {dir} on one leg, the {side} one, {times}.",
        "standing on the {side} foot, the person hops {dir} {n} times {adv}."),
        reps=(2, 5), period=0.8, sides=LR, directions=("forward", "in place"), speeds=("normal", "fast"),
        amplitudes=("small", "normal"), lead=0.9, unit="hops"),
    ActionSpec("jumping_jacks", jumping_jacks, _caps(
        "a person does {n} jumping jacks {adv}.",
        "someone performs jumping jacks {times} {pace}.",
        "the person jumps spreading arms and legs {times}, doing jumping jacks."),
        reps=(2, 6), period=1.1, amplitudes=("small", "normal", "large"), unit="jacks"),
    ActionSpec("kick", kick, _caps(
        "a person kicks {dir} with the {side} leg {times}.",
        "someone does {n} {amp} {dir} kicks with the {side} foot {adv}.",
        "the person kicks {adv} {dir} using the {side} leg, {times}."),
        reps=(1, 4), period=1.3, sides=LR, directions=("forward", "sideways"),
        amplitudes=("small", "normal", "large"), unit="kicks"),
    ActionSpec("stomp", stomp, _caps(
        "a person stomps the {side} foot {times}.",
        "someone raises the {side} knee and stamps down {times} {adv}.",
        "the person stomps {n} times with the {side} foot {pace}."),
        reps=(2, 5), period=1.0, sides=LR, amplitudes=("small", "normal"), unit="stomps"),
    ActionSpec("leg_swing", leg_swing, _caps(
        "a person swings the {side} leg {dir} {times}.",
        "someone swings the {side} leg {dir}, back and forth {times} {adv}.",
        "standing on the {other} leg, the person swings the {side} leg {dir} {n} times."),
        reps=(2, 5), period=1.1, sides=LR, directions=("forward", "sideways"), lead=0.8, unit="swings"),
    ActionSpec("lunge", lunge, _caps(
        "a person lunges forward with the {side} leg {times}.",
        "someone does {n} forward lunges stepping out with the {side} foot {adv}.",
        "the person steps forward into a lunge on the {side} leg and back, {times}."),
        reps=(1, 3), period=2.2, sides=LR, amplitudes=("small", "normal"), unit="lunges"),
    ActionSpec("squat", squat, _caps(
        "a person squats down {times}.",
        "someone does {n} {amp} squats {adv}.",
        "the person bends the knees into a squat and stands back up {times} {pace}."),
        reps=(1, 4), period=1.8, amplitudes=("small", "normal", "large"), unit="squats"),
    ActionSpec("sit_down", sit_down, _caps(
        "a person sits down.",
        "someone sits down on a chair {adv}.",
        "the person lowers themself {pace} to sit down."),
        reps=(1, 1), period=2.2, lead=0.6, tail=1.0, unit="times"),
    ActionSpec("stand_up", stand_up, _caps(
        "a person stands up from a chair.",
        "someone who is sitting gets up {adv}.",
        "the person rises from a seated position to standing {pace}."),
        reps=(1, 1), period=2.0, lead=1.0, tail=0.8, unit="times"),
    ActionSpec("balance", balance, _caps(
        "a person balances on the {side} leg for {n} seconds.",
        "someone stands on the {side} foot with the {other} knee raised and arms out, holding for {n} seconds.",
        "the person lifts the {other} leg and balances on the {side} leg."),
        reps=(2, 4), period=1.0, sides=LR, speeds=("normal",), amplitudes=("small", "normal"), lead=1.0,
        tail=1.0, unit="seconds"),
    ActionSpec("bow", bow, _caps(
        "a person bows {times}.",
        "someone bends forward at the waist in a {amp} bow {times} {adv}.",
        "the person takes a bow {times} {pace}."),
        reps=(1, 3), period=2.0, amplitudes=("small", "normal", "large"), unit="bows"),
    ActionSpec("toe_touch", toe_touch, _caps(
        "a person bends down and touches the toes {times}.",
        "someone reaches down to the feet {times} {adv}.",
        "the person bends over to touch the toes and stands up {times} {pace}."),
        reps=(1, 3), period=2.4, unit="times"),
    ActionSpec("torso_twist", torso_twist, _caps(
        "a person twists the torso left and right {times}.",
        "someone rotates the upper body from side to side {times} {adv}.",
        "with elbows raised, the person twists at the waist to both sides {n} times {pace}."),
        reps=(2, 4), period=1.6, amplitudes=("small", "normal"), lead=0.8, unit="twists"),
    ActionSpec("punch", punch, _caps(
        "a person punches forward with the {side} hand {times}.",
        "someone throws {n} {amp} punches with the {side} fist {adv}.",
        "the person raises the fists and jabs {times} with the {side} arm {pace}."),
        reps=(1, 5), period=0.8, sides=LR, amplitudes=("small", "normal"), lead=0.8, unit="punches"),
    ActionSpec("wave", wave, _caps(
        "a person waves with {hands} {times}.",
        "someone raises {arms} and waves {n} times {adv}.",
        "the person greets by waving {hands} {times} {pace}."),
        reps=(2, 5), period=0.7, sides=LRB, amplitudes=("normal", "large"), lead=0.9, unit="waves"),
    ActionSpec("clap", clap, _caps(
        "a person claps the hands {times}.",
        "someone claps {n} times {adv}.",
        "the person brings the hands together in front of the chest and claps {times} {pace}."),
        reps=(2, 8), period=0.55, amplitudes=("small", "normal"), lead=0.8, unit="claps"),
    ActionSpec("raise_arms", raise_arms, _caps(
        "a person raises {arms} {dir} {times}.",
        "someone lifts {arms} up {dir} and lowers them {times} {adv}.",
        "the person raises {its_arms} {dir} {times} {pace}."),
        reps=(1, 3), period=2.0, sides=LRB, directions=("forward", "sideways"),
        amplitudes=("small", "normal", "large"), unit="times"),
    ActionSpec("arm_circles", arm_circles, _caps(
        "a person makes {dir} arm circles with {arms} {times}.",
        "someone holds {arms} out and circles {dir} {n} times {adv}.",
        "the person rotates {arms} in {amp} {dir} circles {times}."),
        reps=(2, 6), period=0.9, sides=LRB, directions=("forward", "backward"), amplitudes=("small", "normal"),
        lead=0.8, unit="circles"),
    ActionSpec("throw", throw, _caps(
        "a person throws something overhand with the {side} hand {times}.",
        "someone winds up and throws {times} with the {side} arm {adv}.",
        "the person makes {n} overhand throwing motions using the {side} arm {pace}."),
        reps=(1, 3), period=1.6, sides=LR, amplitudes=("small", "normal"), unit="throws"),
    ActionSpec("stretch", stretch, _caps(
        "a person stretches the arms up and leans to the {dir} {times}.",
        "someone raises both arms overhead and bends sideways to the {dir} {times} {adv}.",
        "the person does {n} {amp} side stretches to the {dir} {pace}."),
        reps=(1, 3), period=2.2, directions=LR, amplitudes=("small", "normal"), lead=1.0, tail=0.8,
        unit="stretches"),
]

ACTIONS: dict[str, ActionSpec] = {s.name: s for s in _SPECS}
ACTION_NAMES: tuple[str, ...] = tuple(ACTIONS)


def fit_reps(spec: ActionSpec, p: MotionParams, max_s: float = 8.0) -> MotionParams:
    """Lower ``p.reps`` until the motion lasts at most ``max_s`` seconds (never below 1)."""
    while p.reps > 1 and spec.duration(p) > max_s:
        p = replace(p, reps=p.reps - 1)
    return p


def sample_params(action: str, rng: np.random.Generator) -> MotionParams:
    """Draw the modifiers of one motion of ``action`` (then fitted to 2-8 seconds)."""
    spec = ACTIONS[action]

    def pick(opts):
        return opts[int(rng.integers(len(opts)))]

    p = MotionParams(action=action, side=pick(spec.sides), direction=pick(spec.directions),
                     speed=pick(spec.speeds), amplitude=pick(spec.amplitudes),
                     reps=int(rng.integers(spec.reps[0], spec.reps[1] + 1)))
    return fit_reps(spec, p)


def animate(p: MotionParams, fps: float, rng: np.random.Generator, min_s: float = 2.0) -> Rig:
    """A rig for motion ``p`` at ``fps`` lasting max(2 s, lead + reps * period + tail), whole 20-fps frames."""
    spec = ACTIONS[p.action]
    dur = max(min_s, spec.duration(p))
    stride = int(round(fps / 20.0))
    n20 = int(np.ceil(dur * 20.0 - 1e-9))
    rig = Rig(n20 * stride, fps)
    standing(rig, rng)
    spec.animate(rig, p, dur, rng)
    return rig


def captions(p: MotionParams) -> list[str]:
    """Paraphrased captions of ``p`` (>= 3), each stating its modifiers."""
    return ACTIONS[p.action].captions(p)


def describe_action(spec: ActionSpec) -> str:
    """One line for ``synth-amass --list-actions``."""
    def opts(xs):
        return "|".join(x for x in xs if x) or "-"

    return (f"{spec.name}\tsides={opts(spec.sides)}\tdirections={opts(spec.directions)}\t"
            f"speeds={opts(spec.speeds)}\tamplitudes={opts(spec.amplitudes)}\t"
            f"reps={spec.reps[0]}-{spec.reps[1]} {spec.unit}\tperiod={spec.period:g}s")
