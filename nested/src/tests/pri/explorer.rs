//! A systematic explorer of interleavings: device requests and stop markers, guest responses,
//! teardown, rebind, replace and an overflow of the physical PRI queue, against `hyp`'s
//! drains. Each program below is a few actors (the device, the guest, `hyp`), each a fixed
//! sequence of steps; the explorer runs every interleaving of them (the shuffle product, no
//! sampling), each on a fresh [`World`], and checks after every step:
//!
//! 1. **translations**: the model's trace has no crossing (no DMA, ATS translation or
//!    translated transaction resolved in a generation of the PASID other than the one memory
//!    holds: a stale TLB or ATC entry, or a reuse before quiescence);
//! 2. **requests**: the device acts on every response at once; a group it retries is retried
//!    in the generation it was sent in (a group sent while the PASID had none is never
//!    resolved in a later one);
//! 3. **responses**: every Success response sent by command goes to a group of the generation
//!    live when it is sent;
//! 4. **reuse**: when a parked PASID goes live again, no group the device sent in the torn-down
//!    generation is still in flight (unanswered and not given up with a stop marker);
//!
//! and, once every program has run to its end and the world has settled (drained, the guest's
//! queue served), that no PASID is parked unless the device still has a group of it open
//! without a stop marker (the one case that must never quiesce), that the vSMMU has no work
//! left, and that no call exceeded its budget.
//!
//! The default bound runs in about a second in a debug build; `bigger_bound` (ignored; run
//! with `--ignored`) runs longer programs.

use std::collections::BTreeSet;

use smmu::command::PriResponse;
use smmu_model::trace::{
    Generation, PageRequestFate, ResponseCode, ResponseSource, TraceEvent, crossings,
};
use smmu_model::{AtsCompletion, PageRequest, ResponseHandled};

use super::*;
use crate::budget::MAX_STEP_COST;

const PASID: u32 = 1;
const OTHER: u32 = 2;

/// One atomic step of an actor.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
enum Step {
    /// Device: the first request of group G on PASID 1 (not Last).
    Begin,
    /// Device: the Last request of G.
    End,
    /// Device: a whole one-request group on PASID 1.
    Group,
    /// Device: a stop marker for PASID 1 (it gives up every group it has not had answered).
    StopMarker,
    /// Device: three one-request groups on PASID 2, ignoring its credits (with a two-entry
    /// physical queue: an overflow at this point).
    Burst,
    /// Device: an ATS translation of the VA on PASID 1 (fills its ATC if it translates).
    AtsFill,
    /// Device: a write through its ATC on PASID 1, if it has an entry.
    TranslatedWrite,
    /// Guest: reads its PRI queue and answers the complete groups, in arrival order.
    Serve,
    /// Guest: the same, in reverse order.
    ServeReversed,
    /// Guest: CD 1 invalid (unbind).
    Teardown,
    /// Guest: CD 1 valid, address space B (bind).
    Rebind,
    /// Guest: CD 1 valid, address space C, same ASID (replace while live).
    Replace,
    /// `hyp`: drains the physical PRI and event queues, hands them over, continues work.
    Drain,
}

/// A program: actors, each a sequence of steps, and the world they run in.
struct Program {
    name: &'static str,
    config: WorldConfig,
    actors: &'static [&'static [Step]],
}

/// The default bound.
const PROGRAMS: &[Program] = &[
    Program {
        name: "unbind and rebind around a group",
        config: WORLD,
        actors: &[
            &[Step::Begin, Step::End],
            &[Step::Serve, Step::Teardown, Step::Rebind],
            &[Step::Drain, Step::Drain],
        ],
    },
    Program {
        name: "a stop marker after the group",
        config: WORLD,
        actors: &[
            &[Step::Begin, Step::End, Step::StopMarker],
            &[Step::Teardown, Step::Rebind],
            &[Step::Drain, Step::Drain],
        ],
    },
    Program {
        name: "a group never finished, no stop marker",
        config: WORLD,
        actors: &[
            &[Step::Begin],
            &[Step::Teardown, Step::Rebind],
            &[Step::Drain, Step::Drain],
        ],
    },
    Program {
        name: "replace with a group and the ATC in use",
        config: WORLD,
        actors: &[
            &[Step::AtsFill, Step::Begin, Step::End, Step::TranslatedWrite],
            &[Step::Serve, Step::Replace],
            &[Step::Drain, Step::Drain],
        ],
    },
    Program {
        name: "an overflow of the physical queue in the middle of the group",
        config: WorldConfig {
            physical_priq: 2,
            ..WORLD
        },
        actors: &[
            &[Step::Begin, Step::Burst, Step::End],
            &[Step::Teardown, Step::Rebind],
            &[Step::Drain, Step::Drain],
        ],
    },
    Program {
        name: "two groups answered in arrival order",
        config: WORLD,
        actors: &[
            &[Step::Group, Step::Group],
            &[Step::Serve, Step::Teardown, Step::Rebind],
            &[Step::Drain, Step::Drain],
        ],
    },
    Program {
        name: "two groups answered in reverse order",
        config: WORLD,
        actors: &[
            &[Step::Group, Step::Group],
            &[Step::ServeReversed, Step::Teardown, Step::Rebind],
            &[Step::Drain, Step::Drain],
        ],
    },
    Program {
        name: "the ATC across unbind and rebind",
        config: WORLD,
        actors: &[
            &[Step::AtsFill, Step::TranslatedWrite, Step::TranslatedWrite],
            &[Step::Teardown, Step::Rebind],
            &[Step::Drain],
        ],
    },
];

/// Longer programs (ignored by default).
const BIGGER: &[Program] = &[
    Program {
        name: "everything on one PASID",
        config: WORLD,
        actors: &[
            &[
                Step::AtsFill,
                Step::Begin,
                Step::End,
                Step::StopMarker,
                Step::TranslatedWrite,
            ],
            &[Step::Serve, Step::Teardown, Step::Rebind, Step::Replace],
            &[Step::Drain, Step::Drain, Step::Drain],
        ],
    },
    Program {
        name: "overflow, two groups, unbind, rebind, replace",
        config: WorldConfig {
            physical_priq: 2,
            ..WORLD
        },
        actors: &[
            &[Step::Begin, Step::Burst, Step::End, Step::Group],
            &[
                Step::ServeReversed,
                Step::Teardown,
                Step::Rebind,
                Step::Replace,
            ],
            &[Step::Drain, Step::Drain, Step::Drain],
        ],
    },
];

const WORLD: WorldConfig = WorldConfig {
    physical_priq: 16,
    guest_priq_log2: 4,
    credits: 16,
    offer_pri: true,
};

/// Every interleaving of `actors`, in a fixed order.
fn interleavings(actors: &[&[Step]]) -> Vec<Vec<Step>> {
    fn extend(
        actors: &[&[Step]],
        next: &mut Vec<usize>,
        schedule: &mut Vec<Step>,
        out: &mut Vec<Vec<Step>>,
    ) {
        let mut any = false;
        for actor in 0..actors.len() {
            if let Some(&step) = actors[actor].get(next[actor]) {
                any = true;
                next[actor] += 1;
                schedule.push(step);
                extend(actors, next, schedule, out);
                schedule.pop();
                next[actor] -= 1;
            }
        }
        if !any {
            out.push(schedule.clone());
        }
    }
    let mut out = Vec::new();
    extend(
        actors,
        &mut vec![0; actors.len()],
        &mut Vec::new(),
        &mut out,
    );
    out
}

fn page() -> PageRequest {
    PageRequest {
        address: VA,
        read: true,
        write: true,
        ..PageRequest::default()
    }
}

/// One run: the world, the device's groups as the explorer knows them, and what it checks.
struct Run {
    world: World,
    roots: [u64; 3],
    /// G, once begun.
    begun: Option<u16>,
    /// Groups the device gave up with a stop marker, and groups outstanding when the physical
    /// queue overflowed (IHI 0070 8.1.1 has software take those as answered: the reuse check
    /// cannot expect more; the crossing checks still apply to them).
    abandoned: BTreeSet<u16>,
    /// The generation torn down last, until the PASID is live again.
    torn_down: Option<Generation>,
    /// Whether the guest's CD 1 is valid now (its last write).
    guest_cd_valid: bool,
    reuses: u64,
    /// Retries across generations made on the physical SMMU's own overflow responses.
    hardware_crossings: u64,
    log: Vec<String>,
}

impl Run {
    fn new(config: WorldConfig) -> Self {
        let mut world = World::new(config);
        let a = world.address_space(0);
        let b = world.address_space(1);
        let c = world.address_space(2);
        let d = world.address_space(3);
        world.guest_write_cd(PASID, Some(World::cd(1, a)));
        world.guest_write_cd(OTHER, Some(World::cd(4, d)));
        world.guest_attach(2);
        assert_eq!(world.vsmmu.pasids().live, 2);
        world.take_trace();
        Self {
            world,
            roots: [a, b, c],
            begun: None,
            abandoned: BTreeSet::new(),
            torn_down: None,
            guest_cd_valid: true,
            reuses: 0,
            hardware_crossings: 0,
            log: Vec::new(),
        }
    }

    fn live(&self) -> Option<Generation> {
        self.world.model.live_generation(PSID.0, Some(PASID))
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\nsteps: {:#?}", self.log);
    }

    fn step(&mut self, step: Step) {
        self.log.push(format!("{step:?}"));
        let before = self.world.function.outstanding_groups();
        let w = &mut self.world;
        match step {
            Step::Begin => {
                self.begun = w
                    .function
                    .begin_page_request_group(Some(PASID), &[page()])
                    .ok()
            }
            Step::End => {
                if let Some(index) = self.begun {
                    let _ = w.function.end_page_request_group(index, page());
                }
            }
            Step::Group => {
                let _ = w.function.page_request_group(Some(PASID), &[page()]);
            }
            Step::StopMarker => {
                for group in w.function.outstanding_groups() {
                    if group.ssid == Some(PASID) {
                        self.abandoned.insert(group.index);
                    }
                }
                let _ = w.function.stop_marker(PASID);
            }
            Step::Burst => {
                w.function.reconfigure(|c| c.respect_credits = false);
                for _ in 0..3 {
                    let _ = w.function.page_request_group(Some(OTHER), &[page()]);
                }
                w.function.reconfigure(|c| c.respect_credits = true);
            }
            Step::AtsFill => {
                let _ = w.function.ats_translate(Some(PASID), VA, true);
            }
            Step::TranslatedWrite => {
                let _ = w.function.translated_write(Some(PASID), VA, &[0x5a; 8]);
            }
            Step::Serve | Step::ServeReversed => {
                w.guest_read_priq();
                let mut order: Vec<usize> = (0..w.guest_pending.len()).collect();
                if step == Step::ServeReversed {
                    order.reverse();
                }
                w.guest_answer(Some(&order), PriResponse::Success);
            }
            Step::Teardown => {
                if self.guest_cd_valid {
                    self.torn_down = self.live().or(self.torn_down);
                }
                self.guest_cd_valid = false;
                self.world.guest_write_cd(PASID, None);
            }
            Step::Rebind | Step::Replace => {
                let root = self.roots[if step == Step::Rebind { 1 } else { 2 }];
                let asid = if step == Step::Rebind { 2 } else { 1 };
                if step == Step::Replace && self.guest_cd_valid {
                    // A replace tears the old address space down too.
                    self.torn_down = self.live().or(self.torn_down);
                }
                self.guest_cd_valid = true;
                self.world
                    .guest_write_cd(PASID, Some(World::cd(asid, root)));
            }
            Step::Drain => {
                self.world.hyp_drain();
                self.world.hyp_drain_events();
            }
        }
        self.react(&before);
        self.check_reuse();
    }

    /// The device acts on every response at once; the checks of each step.
    fn react(&mut self, before: &[smmu_model::PageRequestGroup]) {
        for handled in self.world.function.handle_responses() {
            if let ResponseHandled::Retried {
                group,
                completions,
                response,
            } = &handled
            {
                let crossed = completions.iter().any(|c| {
                    matches!(c, AtsCompletion::Success { read, write, generation, .. }
                        if (*read || *write) && *generation != group.generation)
                });
                if crossed && response.source == ResponseSource::Overflow {
                    // The physical SMMU answered Success by itself (IHI 0070 8.1) to a device
                    // that overflowed its queue: no software sees that response. Counted.
                    self.hardware_crossings += 1;
                    if std::env::var("EXPLORER_SHOW").is_ok() {
                        eprintln!(
                            "hardware crossing: sent {:?}, response {:?}: {:?}",
                            group.generation, response.generation, self.log
                        );
                    }
                } else if crossed {
                    self.fail(&format!(
                        "request crossed: group {} sent in {:?}, retried after {:?}",
                        group.index, group.generation, response
                    ));
                }
            }
        }
        let trace = self.world.model.take_trace();
        let overflowed = trace.iter().any(|e| {
            matches!(
                e,
                TraceEvent::PageRequest {
                    fate: PageRequestFate::Discarded | PageRequestFate::AutoResponded(_),
                    ..
                }
            )
        });
        if overflowed {
            for group in self.world.function.outstanding_groups() {
                self.abandoned.insert(group.index);
            }
        }
        if let Some(crossing) = crossings(&trace).first() {
            self.fail(&format!("translation crossed: {crossing:?}"));
        }
        for event in &trace {
            if let TraceEvent::PrgResponse {
                prg_index,
                ssid,
                code: ResponseCode::Success,
                source: ResponseSource::Command,
                live,
                ..
            } = *event
                && let Some(group) = before
                    .iter()
                    .find(|g| g.index == prg_index && g.ssid == ssid)
                && group.generation != live
            {
                self.fail(&format!(
                    "response crossed: group {prg_index} of {:?} answered Success in {live:?}",
                    group.generation
                ));
            }
        }
        self.world.trace.extend(trace);
    }

    /// A PASID going live again must find nothing of its torn-down generation in flight.
    fn check_reuse(&mut self) {
        let reuses = self.world.vsmmu.counters().pasid_reuses;
        if reuses == self.reuses {
            return;
        }
        self.reuses = reuses;
        let Some(old) = self.torn_down.take() else {
            return;
        };
        for group in self.world.function.outstanding_groups() {
            if group.ssid == Some(PASID)
                && group.generation == Some(old)
                && !self.abandoned.contains(&group.index)
            {
                self.fail(&format!(
                    "PASID reused with group {} of the torn-down generation in flight",
                    group.index
                ));
            }
        }
    }

    /// After every step: settle and check the end state.
    fn finish(&mut self) {
        for step in [Step::Drain, Step::Serve, Step::Drain] {
            self.step(step);
        }
        let parked = self.world.vsmmu.pasids().parked;
        let open_without_marker = self.world.function.outstanding_groups().iter().any(|g| {
            g.ssid == Some(PASID)
                && !self.abandoned.contains(&g.index)
                && g.pages.len() == 1
                && self.begun == Some(g.index)
                && !g.fates.is_empty()
        });
        if parked > 0 && !open_without_marker {
            self.fail("a PASID stayed parked with nothing in flight");
        }
        if parked == 0 && self.guest_cd_valid != self.live().is_some() {
            self.fail("the shadow does not follow the guest's CD");
        }
        if self.world.vsmmu.run_pending() {
            self.fail("work left after settling");
        }
        if self.world.vsmmu.counters().max_work_per_call > 512 + MAX_STEP_COST {
            self.fail("a call exceeded its budget");
        }
    }
}

/// What an exploration found.
#[derive(Debug, Default)]
struct Explored {
    /// Interleavings run.
    interleavings: usize,
    /// Interleavings in which the physical SMMU's own overflow response made a device retry a
    /// group across generations (a device beyond its credits: see `Run::react`).
    hardware_crossings: usize,
}

/// Runs every interleaving of every program.
fn explore(programs: &[Program]) -> Explored {
    let mut explored = Explored::default();
    for program in programs {
        let schedules = interleavings(program.actors);
        let mut hardware = 0;
        for schedule in &schedules {
            let mut run = Run::new(program.config);
            run.log.push(program.name.to_string());
            for &step in schedule {
                run.step(step);
            }
            run.finish();
            hardware += usize::from(run.hardware_crossings > 0);
        }
        eprintln!(
            "explorer: {:>6} interleavings of \"{}\"{}",
            schedules.len(),
            program.name,
            if hardware > 0 {
                format!(" ({hardware} crossed through the physical SMMU's overflow response)")
            } else {
                String::new()
            }
        );
        explored.interleavings += schedules.len();
        explored.hardware_crossings += hardware;
    }
    eprintln!(
        "explorer: {} interleavings; no crossing by software; {} through the physical SMMU's \
         overflow responses",
        explored.interleavings, explored.hardware_crossings
    );
    explored
}

#[test]
fn interleavings_are_counted_as_the_shuffle_product() {
    // 2 + 3 + 2 steps: 7! / (2! 3! 2!) = 210.
    assert_eq!(
        interleavings(&[
            &[Step::Begin, Step::End],
            &[Step::Serve, Step::Teardown, Step::Rebind],
            &[Step::Drain, Step::Drain]
        ])
        .len(),
        210
    );
}

/// The default bound: 8 programs, every interleaving (see the module docs for the checks).
#[test]
fn no_request_response_or_translation_crosses_generations_in_any_interleaving() {
    let explored = explore(PROGRAMS);
    assert_eq!(explored.interleavings, 1_560);
}

/// Longer programs: `cargo test -p nested bigger_bound -- --ignored`.
#[test]
#[ignore = "runs tens of thousands of interleavings"]
fn bigger_bound() {
    let explored = explore(BIGGER);
    assert!(explored.interleavings > 10_000);
}
