"""Render one gym-duckietown driving episode and stream its frames to stdout.

Run inside the simulator venv (gym-duckietown needs numpy 1.23 and pyglet 1.5, the main venv has
numpy 2), started by the orchestrator as a subprocess::

    cd <repo> && .venv-sim/bin/python -m training.data.sim_worker < spec.json

stdin holds one JSON episode spec::

    {"map": "loop_empty", "seed": 3, "frames": 300, "width": 640, "height": 480, "fps": 30,
     "effect": null | "fog" | "darkness" | "obstacles" | "spin" | "reverse" | "jitter" | "speedup",
     "onset": 120, "intensity": 0.7, "traffic_lights": false, "decorations": 0}

`map`, `seed` and `frames` are required; the others default to 640, 480, 30, null, 0, 0.5, false
and 0. `onset` is the first frame index with the effect active; `intensity` (0..1) is its strength.
`traffic_lights` puts a traffic light on a corner of every intersection tile of a map that has
none, as the simulator's `4way` map places its one (in-distribution scenery, not an effect).
`decorations` stands that many objects of a Duckietown town (houses, buildings, trees, parked buses
and trucks, duckies, cones, barriers, road signs) beside the road: on non-drivable tiles that touch
a drivable one (the ground around the map's grid counts), clear of the road, drawn from the seed.
Scenery too: the robot drives as it would without them (the same poses, frame by frame), and they
are not obstacles (no braking, no `obstacle_pixels`).

stdout carries, for each frame i in 0..frames-1 and flushed after each frame: a 4-byte
little-endian unsigned length N, N bytes of UTF-8 JSON metadata, then height*width*3 bytes of RGB
uint8 (row-major). The metadata is::

    {"i": i, "t": i / fps, "x": .., "z": .., "angle": .., "v": .., "omega": ..,
     "effect_active": bool, "reset": bool, "obstacle_pixels": int}

x, z and angle are the robot pose when frame i was rendered (simulator world frame, metres and
radians); v and omega are the command issued after seeing frame i, which moves the robot to frame
i+1 (v is the effective linear speed command: under `speedup` the commanded speed times the time
scale). `reset` is true on a frame that follows a simulator reset (the robot left the road), so
consumers can tell the jump in the image sequence from motion. `obstacle_pixels` counts the pixels
where placed obstacles show in frame i (the frame rendered again without them differs there; 0
without obstacles), so labels can say when an obstacle is in view, not only when it was placed.

Exit code 0 after the last frame. On a bad spec or any failure exit code 2, and the last line on
stderr is "sim_worker: <what went wrong>" (an unexpected error prints its traceback before it).

Effects, active from frame `onset` on (before it the episode is plain lane following):
fog (OpenGL EXP2 fog and a matching grey sky), darkness (dimmed light and a dark sky), obstacles
(a bus, truck, tree, cones or a crowd of duckies placed on the lane ahead; the robot brakes and
stops in front of them), spin (turning in place), reverse (lane following backwards), jitter
(steering, speed and camera tilt flipping sign every 1-3 frames) and speedup (the robot covers
2.5-4x the distance per frame).

Importing this module only defines names: the orchestrator imports ID_MAPS and EFFECTS from the
main venv, where numpy 1.23, pyglet and gym are not available.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import numpy as np
    from gym_duckietown.envs import DuckietownEnv

# Maps on which the lane controller below was checked to drive 300-frame episodes (6 seeds each)
# without leaving the lane. None holds a bus, truck or tree, so the `obstacles` effect shows
# objects the in-distribution data never contains (loop_empty has one cone and a few duckies
# on the grass). zigzag_dists and udem1 drive just as well but have buses, trucks and a tree
# by the road.
ID_MAPS: tuple[str, ...] = (
    "loop_empty",
    "small_loop",
    "Montreal_loop",
    "ETHZ_loop",
    "udem1_empty",
    "4way",
)
EFFECTS: tuple[str, ...] = ("fog", "darkness", "obstacles", "spin", "reverse", "jitter", "speedup")
OBSTACLE_KINDS: tuple[str, ...] = ("bus", "truck", "cone", "tree", "duckie")

# Lane following. The command is [v, omega] of DuckietownEnv; v = 0.35 gives ~0.25 m/s on the floor.
NORMAL_SPEED = 0.35
LOOKAHEAD_M = 0.25
STEERING_GAIN = 8.0
# Spawn poses at most this far from the lane direction and centre: the simulator's default
# (60 degrees, anywhere on the tile) makes the first seconds a recovery manoeuvre, and a spawn in
# a bend's outer corner can leave the controller circling there.
START_ANGLE_DEG = 20.0
START_LANE_OFFSET_M = 0.08
MAX_SPAWN_RESETS = 50
# Fixed-function GL colour of the fog; the sky (cleared to env.horizon_color) gets the same.
FOG_COLOR = (0.72, 0.72, 0.74)
# Braking for placed obstacles: full speed beyond STOP_GAP + BRAKE_RANGE, standstill at STOP_GAP
# (metres between the robot's rotation centre and the obstacle's bounding circle).
STOP_GAP_M = 0.18
BRAKE_RANGE_M = 0.3
# Obstacles go this far ahead along the lane (metres; a tile is 0.585 m).
OBSTACLE_DISTANCE_M = (0.8, 1.6)
OBSTACLE_PIXEL_DIFFERENCE = (
    8  # grey levels: more than JPEG-free rendering noise (there is none) and antialiasing
)
LANE_PATH_STEP_M = 0.05
# The simulator's `4way` map hangs its traffic light this high, at this offset from the tile centre
# (metres, map frame) and heading; other corners are the same pose turned by
# multiples of 90 degrees.
TRAFFIC_LIGHT_HEIGHT_M = 0.4
TRAFFIC_LIGHT_CORNER_M = (-0.18, -0.18)
TRAFFIC_LIGHT_HEADING_DEG = 135.0
INTERSECTION_TILES = ("3way_left", "3way_right", "4way")
# Scenery beside the road (`decorations`): kind -> (relative frequency, height range in metres),
# sized as the simulator's decorated towns (udem1, zigzag_dists) size them. "sign" stands for one of
# SIGN_KINDS. Buses and trucks are the obstacles' meshes: beside the road they are a normal town.
DECORATION_KINDS: dict[str, tuple[float, tuple[float, float]]] = {
    "house": (2.0, (0.4, 0.55)),
    "building": (1.0, (0.5, 0.7)),
    "tree": (3.0, (0.2, 0.35)),
    "bus": (1.5, (0.17, 0.22)),
    "truck": (1.5, (0.18, 0.25)),
    "duckie": (2.0, (0.06, 0.1)),
    "cone": (1.0, (0.06, 0.1)),
    "barrier": (1.0, (0.07, 0.1)),
    "sign": (2.0, (0.16, 0.2)),
}
SIGN_KINDS = (
    "sign_stop",
    "sign_yield",
    "sign_duck_crossing",
    "sign_pedestrian",
    "sign_T_intersect",
    "sign_left_T_intersect",
    "sign_right_T_intersect",
    "sign_4_way_intersect",
    "sign_do_not_enter",
    "sign_oneway_left",
    "sign_oneway_right",
    "sign_no_left_turn",
    "sign_no_right_turn",
)
# A decoration's footprint stays this far (metres) from every drivable tile: the simulator checks
# only the robot's centre, wheels and nose for the road, so its rear corners can reach a few
# centimetres past it; further out no decoration can touch the robot or change the drive. And this
# far from the other objects, so none stand inside each other.
DECORATION_ROAD_MARGIN_M = 0.1
DECORATION_GAP_M = 0.03
DECORATION_TRIES = 100  # draws per object before a full map leaves it out
MAX_DECORATIONS = 500

_SPEC_DEFAULTS: dict[str, Any] = {
    "width": 640,
    "height": 480,
    "fps": 30.0,
    "effect": None,
    "onset": 0,
    "intensity": 0.5,
    "traffic_lights": False,
    "decorations": 0,
}
_SPEC_REQUIRED = ("map", "seed", "frames")


class SpecError(ValueError):
    """The episode spec cannot be rendered; the message says which field is wrong and why."""


@dataclass(frozen=True)
class EpisodeSpec:
    map: str
    seed: int
    frames: int
    width: int
    height: int
    fps: float
    effect: str | None
    onset: int
    intensity: float
    traffic_lights: bool
    decorations: int

    @classmethod
    def from_json(cls, text: str) -> EpisodeSpec:
        """Parse and validate the spec; raises SpecError naming the first bad field."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"spec on stdin is not JSON: {err}") from None
        if not isinstance(raw, dict):
            raise SpecError("spec on stdin must be a JSON object")
        unknown = sorted(set(raw) - set(_SPEC_REQUIRED) - set(_SPEC_DEFAULTS))
        if unknown:
            raise SpecError(f"unknown spec field(s) {unknown}")
        missing = [key for key in _SPEC_REQUIRED if key not in raw]
        if missing:
            raise SpecError(f"missing spec field(s) {missing}")
        values = {**_SPEC_DEFAULTS, **raw}
        spec = cls(
            map=_typed(values, "map", str),
            seed=_typed(values, "seed", int),
            frames=_typed(values, "frames", int),
            width=_typed(values, "width", int),
            height=_typed(values, "height", int),
            fps=float(_typed(values, "fps", (int, float))),
            effect=None if values["effect"] is None else _typed(values, "effect", str),
            onset=_typed(values, "onset", int),
            intensity=float(_typed(values, "intensity", (int, float))),
            traffic_lights=_typed(values, "traffic_lights", bool),
            decorations=_typed(values, "decorations", int),
        )
        spec._check_ranges()
        return spec

    def _check_ranges(self) -> None:
        if self.frames < 1:
            raise SpecError(f"frames must be >= 1, got {self.frames}")
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise SpecError(f"width/height must be within 16..4096, got {self.width}x{self.height}")
        if not 0 < self.fps <= 1000:
            raise SpecError(f"fps must be within (0, 1000], got {self.fps}")
        if self.effect is not None and self.effect not in EFFECTS:
            raise SpecError(f"unknown effect {self.effect!r}; known: {', '.join(EFFECTS)}")
        if self.onset < 0:
            raise SpecError(f"onset must be >= 0, got {self.onset}")
        if not 0.0 <= self.intensity <= 1.0:
            raise SpecError(f"intensity must be within 0..1, got {self.intensity}")
        if self.seed < 0:
            raise SpecError(f"seed must be >= 0, got {self.seed}")
        if not 0 <= self.decorations <= MAX_DECORATIONS:
            raise SpecError(
                f"decorations must be within 0..{MAX_DECORATIONS}, got {self.decorations}"
            )


def _typed(values: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = values[key]
    # bool is an int subclass, and true/false where a number belongs is certainly a mistake.
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise SpecError(f"spec field {key!r} has the wrong type: {value!r}")
    return value


class Episode:
    """One episode: the environment, the lane controller and the effect, frame by frame."""

    def __init__(self, spec: EpisodeSpec) -> None:
        import numpy as np
        from gym_duckietown.envs import DuckietownEnv

        self.spec = spec
        # Every random choice (spawn poses, effect parameters) follows from spec.seed.
        random.seed(spec.seed)
        np.random.seed(spec.seed % 2**32)
        self.rng = np.random.default_rng(spec.seed)
        self.env: DuckietownEnv = DuckietownEnv(
            map_name=spec.map,
            seed=spec.seed,
            camera_width=spec.width,
            camera_height=spec.height,
            frame_rate=spec.fps,
            domain_rand=False,
            distortion=False,
            max_steps=2**31 - 1,
            accept_start_angle_deg=START_ANGLE_DEG,
        )
        self._spawn_in_lane()
        self.base_dt = self.env.delta_time
        self.camera_pitch = float(self.env.cam_angle[0])
        self.active = False
        self.resets = 0
        # Effect parameters, drawn once so the effect is steady over the episode.
        s = spec.intensity
        self.spin_rate = float(self.rng.choice([-1.0, 1.0])) * (4.0 + 10.0 * s)
        self.reverse_speed = -(0.15 + 0.25 * s)
        self.time_scale = 2.5 + 1.5 * s
        self.jitter_sign = 1.0
        self.jitter_hold = 0
        self.obstacle_kind = str(self.rng.choice(OBSTACLE_KINDS))
        self.base_objects = _object_list(self.env.map_data.get("objects"))
        if spec.traffic_lights and not any(
            obj.get("kind") == "trafficlight" for obj in self.base_objects
        ):
            self.base_objects += self._traffic_lights()
            self._load_objects(self.base_objects)
        # Placed after the spawn, from a stream of their own: nothing else the seed draws changes.
        self.decorations = self._decorations() if spec.decorations else []
        if self.decorations:
            self._load_objects(self.base_objects + self.decorations)
        self.obstacles: list[Any] = []
        self.obstacle_descs: list[dict[str, Any]] = []

    def _traffic_lights(self) -> list[dict[str, Any]]:
        """A traffic light on one corner (drawn from the seed) of every intersection tile.

        Traffic lights are not collidable in the simulator, so the drive is the same as without
        them; only the view changes.
        """
        env = self.env
        size = env.road_tile_size
        lights = []
        for tile in env.grid:
            if tile is None or tile["kind"] not in INTERSECTION_TILES:
                continue
            i, j = tile["coords"]  # j counts rows from the top; map poses count from the bottom
            turns = int(self.rng.integers(4))
            angle = math.radians(90 * turns)
            dx, dy = TRAFFIC_LIGHT_CORNER_M
            lights.append(
                {
                    "kind": "trafficlight",
                    "pose": {
                        "~SE2Transform": {
                            "p": [
                                (i + 0.5) * size + dx * math.cos(angle) - dy * math.sin(angle),
                                (env.grid_height - j - 0.5) * size
                                + dx * math.sin(angle)
                                + dy * math.cos(angle),
                            ],
                            "theta_deg": TRAFFIC_LIGHT_HEADING_DEG + 90 * turns,
                        }
                    },
                    "height": TRAFFIC_LIGHT_HEIGHT_M,
                    "static": True,
                }
            )
        return lights

    def _decorations(self) -> list[dict[str, Any]]:
        """`spec.decorations` objects beside the road, as map object descriptions.

        Each gets a kind and a height, then a non-drivable cell next to a drivable tile, a
        position in it and a heading are drawn until its footprint (the simulator's own, from
        the mesh's extent) keeps DECORATION_ROAD_MARGIN_M from every drivable tile and
        DECORATION_GAP_M from the objects already there; one that finds no room in
        DECORATION_TRIES draws is left out.
        """
        import numpy as np
        from duckietown_world.world_duckietown.map_loading import get_transform
        from gym_duckietown.collision import generate_corners
        from gym_duckietown.objmesh import get_mesh

        env = self.env
        rng = np.random.default_rng([self.spec.seed, 1])
        size = env.road_tile_size
        drivable = {tuple(t["coords"]) for t in env.grid if t is not None and t["drivable"]}
        cells = sorted(
            (i, j)
            for i in range(-1, env.grid_width + 1)
            for j in range(-1, env.grid_height + 1)
            if (i, j) not in drivable
            and any((i + di, j + dj) in drivable for di in (-1, 0, 1) for dj in (-1, 0, 1))
        )
        m = DECORATION_ROAD_MARGIN_M
        road = [
            np.array(
                [
                    [i * size - m, j * size - m],
                    [(i + 1) * size + m, j * size - m],
                    [(i + 1) * size + m, (j + 1) * size + m],
                    [i * size - m, (j + 1) * size + m],
                ]
            )
            for i, j in sorted(drivable)
        ]
        taken = [obj.obj_corners for obj in env.objects]
        kinds = list(DECORATION_KINDS)
        weights = np.array([DECORATION_KINDS[k][0] for k in kinds])
        placed: list[dict[str, Any]] = []
        for _ in range(self.spec.decorations):
            group = str(rng.choice(kinds, p=weights / weights.sum()))
            kind = str(rng.choice(SIGN_KINDS)) if group == "sign" else group
            mesh = get_mesh("sign_generic" if group == "sign" else kind)
            height = float(rng.uniform(*DECORATION_KINDS[group][1]))
            for _ in range(DECORATION_TRIES):
                i, j = cells[int(rng.integers(len(cells)))]
                x, z = (i + rng.uniform(0, 1)) * size, (j + rng.uniform(0, 1)) * size
                desc = {
                    "kind": kind,
                    # The map's cartesian frame (z flipped), as _place_obstacles writes it.
                    "pose": {
                        "~SE2Transform": {
                            "p": [float(x), env.grid_height * size - float(z)],
                            "theta_deg": float(rng.uniform(0, 360)),
                        }
                    },
                    "height": height,
                    "static": True,
                }
                pos, angle = env.weird_from_cartesian(
                    get_transform(desc, env.grid_width, size).as_SE2()
                )
                corners = generate_corners(
                    pos, mesh.min_coords, mesh.max_coords, angle, height / mesh.max_coords[1]
                )
                if not any(_overlap(corners, tile, 0.0) for tile in road) and not any(
                    _overlap(corners, other, DECORATION_GAP_M) for other in taken
                ):
                    placed.append(desc)
                    taken.append(corners)
                    break
        return placed

    def _load_objects(self, objects: list[dict[str, Any]]) -> None:
        """Replace the scene's objects without a reset (the robot keeps its pose), lit as reset()
        lights them without domain randomisation (new objects start black)."""
        self.env._load_objects({"objects": objects})
        for obj in self.env.objects:
            obj.color = [1.0, 1.0, 1.0, 1.0]
            obj.visible = True

    def _spawn_in_lane(self) -> None:
        """Reset until the robot starts inside the right lane.

        Simulator.reset() spawns anywhere on a drivable tile, e.g. in a bend's outer corner,
        where the lane curve picked by the heading can make the controller circle on the spot.
        """
        from gym_duckietown.exceptions import NotInLane

        for _ in range(MAX_SPAWN_RESETS):
            try:
                lane = self.env.get_lane_pos2(self.env.cur_pos, self.env.cur_angle)
                if abs(lane.dist) < START_LANE_OFFSET_M:
                    return
            except NotInLane:
                pass
            self.env.reset()

    # -- main loop ---------------------------------------------------------------------------

    def run(self, out: BinaryIO) -> None:
        """Render all frames to `out`; an off-road robot is reset so the frame count stays exact."""
        import numpy as np

        env, spec = self.env, self.spec
        obs: np.ndarray = env.render_obs()
        was_reset = False
        for i in range(spec.frames):
            if i == spec.onset and spec.effect is not None:
                self.active = True
                self._apply_scene()
                obs = env.render_obs()
            v, omega = self._command()
            meta = {
                "i": i,
                "t": i / spec.fps,
                "x": float(env.cur_pos[0]),
                "z": float(env.cur_pos[2]),
                "angle": math.remainder(float(env.cur_angle), math.tau),
                "v": v * env.delta_time / self.base_dt,
                "omega": omega,
                "effect_active": self.active,
                "reset": was_reset,
                "obstacle_pixels": self._obstacle_pixels(obs) if self.obstacles else 0,
            }
            _write_frame(out, meta, obs)
            if i == spec.frames - 1:
                break
            obs, _, done, _ = env.step(np.array([v, omega]))
            was_reset = bool(done)
            if done:
                self.resets += 1
                self._reset()
                obs = env.render_obs()

    def _reset(self) -> None:
        """Put the robot back on the road after it left it, in the scene it had.

        The simulator refuses spawn poses near objects, so the decorations are out while it
        spawns: the robot restarts where it would without them.
        """
        if self.decorations:
            self._load_objects(self.base_objects + self.obstacle_descs)
        self.env.reset()
        self._spawn_in_lane()
        if self.decorations:
            self._load_objects(self.base_objects + self.decorations + self.obstacle_descs)
        if self.active:
            self._apply_scene()

    def _obstacle_pixels(self, obs: np.ndarray) -> int:
        """Pixels of `obs` (the current view) that change when the placed obstacles are hidden."""
        import numpy as np

        for obj in self.obstacles:
            obj.visible = False
        try:
            bare = self.env.render_obs()
        finally:
            for obj in self.obstacles:
                obj.visible = True
        difference = np.abs(obs.astype(np.int16) - bare.astype(np.int16)).max(axis=2)
        return int(np.count_nonzero(difference > OBSTACLE_PIXEL_DIFFERENCE))

    # -- driving -----------------------------------------------------------------------------

    def _command(self) -> tuple[float, float]:
        """The [v, omega] command for the current state: lane following, altered by the effect."""
        effect = self.spec.effect if self.active else None
        s = self.spec.intensity
        if effect == "spin":
            return 0.0, self.spin_rate
        if effect == "reverse":
            return self.reverse_speed, self._steer(backwards=True)
        speed = NORMAL_SPEED * self._braking()
        omega = self._steer() * speed / NORMAL_SPEED
        if effect == "jitter":
            if self.jitter_hold == 0:
                self.jitter_sign = -self.jitter_sign
                self.jitter_hold = int(self.rng.integers(1, 4))
                self._shake_camera()
            self.jitter_hold -= 1
            omega += self.jitter_sign * (2.0 + 6.0 * s)
            speed *= 1.0 + self.jitter_sign * 0.6 * s
        return speed, omega

    def _shake_camera(self) -> None:
        """Tilt the camera by a few degrees, flipping direction with the jitter sign.

        The robot's dynamics (0.15 s delay, 0.25 s time constant) smooth a steering command
        that flips every 1-3 frames to a barely visible wobble; a loose, shaking camera mount
        is what such jitter looks like in the images. env.cam_angle (pitch, yaw, roll in
        degrees) only feeds the renderer, so the driving is unaffected.
        """
        amplitude = self.jitter_sign * (1.0 + 3.0 * self.spec.intensity)
        pitch, yaw, roll = self.rng.uniform(0.4, 1.0, size=3) * amplitude
        self.env.cam_angle = [self.camera_pitch + pitch, yaw, -roll]

    def _steer(self, backwards: bool = False) -> float:
        """Pure pursuit on the right lane's centre curve.

        The goal is the lane point LOOKAHEAD_M ahead of (or, driving backwards, behind) the
        closest lane point, re-projected onto the lane so it follows curves into the next tile.
        The turn command is proportional to the goal's sideways offset in the robot frame.
        """
        import numpy as np

        env = self.env
        point, tangent = env.closest_curve_point(env.cur_pos, env.cur_angle)
        if point is None:
            return 0.0
        direction = -1.0 if backwards else 1.0
        goal = None
        lookahead = LOOKAHEAD_M
        for _ in range(4):
            goal, _ = env.closest_curve_point(
                point + direction * tangent * lookahead, env.cur_angle
            )
            if goal is not None:
                break
            lookahead *= 0.5
        if goal is None:
            goal = point
        to_goal = goal - env.cur_pos
        to_goal /= np.linalg.norm(to_goal) + 1e-9
        right = np.array([math.sin(env.cur_angle), 0.0, math.cos(env.cur_angle)])
        # Backing up, the rear must swing towards the goal: the turn has the opposite sign.
        return -direction * STEERING_GAIN * float(np.dot(right, to_goal))

    def _braking(self) -> float:
        """Speed factor 0..1 that stops the robot in front of the placed obstacles."""
        import numpy as np

        if not self.obstacles:
            return 1.0
        env = self.env
        heading = np.array([math.cos(env.cur_angle), -math.sin(env.cur_angle)])
        here = env.cur_pos[[0, 2]]
        gap = math.inf
        for obj in self.obstacles:
            center = np.array([obj.pos[0], obj.pos[2]], dtype=float)
            offset = center - here
            if float(np.dot(offset, heading)) > 0:
                radius = float(np.max(np.linalg.norm(obj.obj_corners - center, axis=1)))
                gap = min(gap, float(np.linalg.norm(offset)) - radius)
        return float(np.clip((gap - STOP_GAP_M) / BRAKE_RANGE_M, 0.0, 1.0))

    # -- scene effects -----------------------------------------------------------------------

    def _apply_scene(self) -> None:
        """Change the world for the active effect.

        Called at onset and again after every reset, because Simulator.reset() restores the
        light, the sky colour and the spawn pose. GL fog and light state otherwise persist
        across renders: _render_img() never touches them.
        """
        import numpy as np
        from pyglet import gl

        env, s = self.env, self.spec.intensity
        effect = self.spec.effect
        if effect == "fog":
            gl.glEnable(gl.GL_FOG)
            gl.glFogi(gl.GL_FOG_MODE, gl.GL_EXP2)
            gl.glFogf(gl.GL_FOG_DENSITY, 0.6 + 2.6 * s)
            gl.glFogfv(gl.GL_FOG_COLOR, (gl.GLfloat * 4)(*FOG_COLOR, 1.0))
            gl.glHint(gl.GL_FOG_HINT, gl.GL_NICEST)
            env.horizon_color = np.array(FOG_COLOR)
        elif effect == "darkness":
            # reset() sets ambient 0.25 and diffuse 0.35; the renderer's global ambient (0.3)
            # stays, which keeps the darkest setting at about a fifth of normal brightness.
            k = 0.25 * (1.0 - s)
            gl.glLightfv(
                gl.GL_LIGHT0, gl.GL_AMBIENT, (gl.GLfloat * 4)(0.25 * k, 0.25 * k, 0.25 * k, 1.0)
            )
            gl.glLightfv(
                gl.GL_LIGHT0, gl.GL_DIFFUSE, (gl.GLfloat * 4)(0.35 * k, 0.35 * k, 0.35 * k, 1.0)
            )
            env.horizon_color = np.array(env.color_sky) * (0.04 + 0.16 * (1.0 - s))
        elif effect == "obstacles":
            self._place_obstacles()
        elif effect == "speedup":
            # A longer physics step per frame: the robot covers time_scale times the distance
            # between frames and turns as fast, so it keeps the lane like a faster robot would.
            env.delta_time = self.base_dt * self.time_scale

    def _place_obstacles(self) -> None:
        """Put the episode's obstacle on the lane ahead of the robot, where the camera sees it.

        The spot is drawn among lane points 0.8-1.6 m ahead along the robot's path that lie
        within 25 degrees of its heading (on a bend the point straight ahead along the lane may
        be outside the image); failing that, the best-aligned point is taken. Objects are loaded
        with Simulator._load_objects (map objects plus the new ones), which rebuilds the object
        and collision lists without a reset, so the robot keeps its pose and the frame sequence
        stays continuous.
        """
        env, s, rng = self.env, self.spec.intensity, self.rng
        path = _lane_path(env, OBSTACLE_DISTANCE_M[1])
        near = int(OBSTACLE_DISTANCE_M[0] / LANE_PATH_STEP_M)
        reachable = path[near:] or path[-1:]
        bearings = [abs(_bearing(env, point)) for point, _ in reachable]
        in_view = [k for k, bearing in enumerate(bearings) if bearing < math.radians(25)]
        pick = (
            int(rng.choice(in_view))
            if in_view
            else min(range(len(reachable)), key=bearings.__getitem__)
        )
        (x, z), (tx, tz) = reachable[pick]
        lane_deg = math.degrees(math.atan2(-tz, tx))
        side = (-tz, tx)  # to the right of the driving direction, in (x, z)
        kind = self.obstacle_kind
        size = 0.8 + 0.5 * s
        placed: list[tuple[str, float, float, float, float]] = []  # kind, x, z, heading, height
        if kind in ("bus", "truck"):
            placed.append(
                (
                    kind,
                    x,
                    z,
                    lane_deg + float(rng.uniform(-15, 15)),
                    {"bus": 0.18, "truck": 0.2}[kind] * size,
                )
            )
        elif kind == "tree":
            placed.append((kind, x, z, float(rng.uniform(0, 360)), 0.25 * size))
        elif kind == "cone":
            count = 2 + round(2 * s)
            for k in range(count):
                lateral = (k - (count - 1) / 2) * 0.09 + float(rng.normal(0, 0.01))
                placed.append((kind, x + side[0] * lateral, z + side[1] * lateral, 0.0, 0.1 * size))
        else:
            for _ in range(4 + round(6 * s)):
                ahead, lateral = rng.uniform(-0.15, 0.15, size=2)
                px = x + tx * ahead + side[0] * lateral
                pz = z + tz * ahead + side[1] * lateral
                placed.append(
                    (
                        kind,
                        float(px),
                        float(pz),
                        float(rng.uniform(0, 360)),
                        float(rng.uniform(0.06, 0.1)) * size,
                    )
                )
        height_m = env.grid_height * env.road_tile_size
        new = [
            {
                "kind": k,
                # A "pose" is taken as given in the map's cartesian frame (z flipped); the "pos"
                # form would misplace objects on maps that are not one tile wider than high.
                "pose": {"~SE2Transform": {"p": [px, height_m - pz], "theta_deg": deg}},
                "height": h,
                "static": True,
            }
            for k, px, pz, deg, h in placed
        ]
        self._load_objects(self.base_objects + self.decorations + new)
        self.obstacle_descs = new
        # The new objects are the last ones loaded. Not every map object becomes one (the simulator
        # skips floor tags), so counting from the front would miss obstacles: they would never be
        # seen as in view (no OOD label) nor braked for.
        self.obstacles = env.objects[len(env.objects) - len(new) :]
        if [obj.kind for obj in self.obstacles] != [k for k, *_ in placed]:
            raise RuntimeError(
                f"placed obstacles {[k for k, *_ in placed]} not found among the loaded objects"
            )


def _object_list(objects: Any) -> list[dict[str, Any]]:
    """Map objects as a list (map files give a list or a name -> description mapping)."""
    if objects is None:
        return []
    return list(objects.values()) if isinstance(objects, dict) else list(objects)


def _overlap(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    """Whether two convex polygons (corners in order, rows (x, z)) come closer than `gap` along
    every separating axis candidate (the edge normals of both)."""
    import numpy as np

    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        for nx, nz in np.stack([-edges[:, 1], edges[:, 0]], axis=1):
            norm = math.hypot(nx, nz)
            if norm == 0:
                continue
            pa = (a[:, 0] * nx + a[:, 1] * nz) / norm
            pb = (b[:, 0] * nx + b[:, 1] * nz) / norm
            if pa.max() + gap <= pb.min() or pb.max() + gap <= pa.min():
                return False
    return True


def _lane_path(
    env: DuckietownEnv, distance: float
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Points (x, z) and unit tangents every LANE_PATH_STEP_M along the right lane, from the robot.

    Walks the lane the way the controller drives it (the curve chosen by the current heading),
    so an obstacle placed on the path lies on the robot's way. Stops early where the lane ends.
    """
    import numpy as np

    pos, angle = np.array(env.cur_pos, dtype=float), float(env.cur_angle)
    path: list[tuple[tuple[float, float], tuple[float, float]]] = []
    for _ in range(max(1, int(distance / LANE_PATH_STEP_M))):
        point, tangent = env.closest_curve_point(pos, angle)
        if point is None:
            break
        path.append(((float(point[0]), float(point[2])), (float(tangent[0]), float(tangent[2]))))
        pos = point + tangent * LANE_PATH_STEP_M
        angle = math.atan2(-tangent[2], tangent[0])
    if not path:
        pos = env.cur_pos
        path.append(
            ((float(pos[0]), float(pos[2])), (math.cos(env.cur_angle), -math.sin(env.cur_angle)))
        )
    return path


def _bearing(env: DuckietownEnv, point: tuple[float, float]) -> float:
    """Angle (radians, left positive) of a world point (x, z) off the robot's heading."""
    dx, dz = point[0] - env.cur_pos[0], point[1] - env.cur_pos[2]
    forward = dx * math.cos(env.cur_angle) - dz * math.sin(env.cur_angle)
    left = -dx * math.sin(env.cur_angle) - dz * math.cos(env.cur_angle)
    return math.atan2(left, forward)


def _write_frame(out: BinaryIO, meta: dict[str, Any], rgb: np.ndarray) -> None:
    header = json.dumps(meta, separators=(",", ":")).encode()
    out.write(struct.pack("<I", len(header)))
    out.write(header)
    out.write(memoryview(rgb).cast("B"))
    out.flush()


def _known_maps() -> list[str]:
    from duckietown_world.resources import list_maps2

    return sorted(list_maps2())


def _import_simulator() -> None:
    """Import gym-duckietown headless (EGL) and quiet.

    pyglet must be told before gym_duckietown creates its shadow window, or it looks for an X
    server. pyglet's default debug_gl checks glGetError after every GL call, which costs about
    15 % of the frame rate. The simulator logs every reset at INFO level and gym warns about its
    own age.
    """
    import logging
    import warnings

    import pyglet

    pyglet.options["headless"] = True
    pyglet.options["debug_gl"] = False
    logging.disable(logging.INFO)
    warnings.filterwarnings("ignore")
    import gym_duckietown.envs  # noqa: F401


def main() -> int:
    # The frame stream gets a private copy of stdout; fd 1 is pointed at stderr so stray prints
    # (gym_duckietown prints pyglet's options on import) cannot corrupt the binary stream.
    stream = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    try:
        spec = EpisodeSpec.from_json(sys.stdin.read())
        _import_simulator()
        known = _known_maps()
        if spec.map not in known:
            raise SpecError(f"unknown map {spec.map!r}; known: {', '.join(known)}")
        Episode(spec).run(stream)
        stream.close()
    except SpecError as err:
        print(f"sim_worker: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        print("sim_worker: the reader closed the frame stream", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the contract is exit code 2 and a last line that says why
        traceback.print_exc()
        print(f"sim_worker: {type(err).__name__}: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
