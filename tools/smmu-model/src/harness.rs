//! The conformance suite's [`Harness`] on the model: the real driver over [`SmmuModel`], a
//! simulated PCIe function as the DMA master, test pages in [`PhysicalMemory`], and an
//! `aarch64-paging` table pool there for the stage-2 domain case.
//!
//! This module owns the memory layout of the model "machine" and the mapping of the suite's
//! abstract device operations onto [`PcieFunction`]. Queues are sized small (64 events, 16 page
//! requests) so that the overflow cases fill them in a few transfers.

use smmu::driver::{Driver, DriverConfig, DriverMemory, Error as DriverError};
use smmu::{PhysAddr, StreamId, SubstreamId};
use smmu_conformance::{
    AtsResult, DeviceCapabilities, DeviceReaction, Direction, DmaResult, Harness, HarnessError,
    PageRequestSpec, Unsupported,
};

use crate::config::{InvalidationTiming, ModelConfig};
use crate::memory::{ModelPlatform, ModelRegion, ModelTables, PAGE_BYTES, PhysicalMemory};
use crate::model::SmmuModel;
use crate::pcie::{
    DmaReport, FunctionConfig, FunctionError, PageRequest, PcieFunction, ResponseHandled,
};
use crate::translate::AtsCompletion;

/// Where the model machine's RAM starts, and its size.
pub const RAM_BASE: u64 = 0x8000_0000;
const RAM_BYTES: u64 = 64 << 20;
/// The test pages.
const TEST_PAGES: u64 = RAM_BASE + 0x100_0000;
const TEST_PAGE_COUNT: usize = 64;
/// The stage-2 domain's table pool.
const DOMAIN_TABLES: u64 = RAM_BASE + 0x200_0000;
const DOMAIN_TABLE_PAGES: u64 = 16;
/// The PRI queue's size: small, so that the overflow case fills it quickly.
const PRI_QUEUE_ENTRIES: u32 = 16;
/// The DMA master's stream, as on QEMU virt.
pub const STREAM: u32 = 8;

/// The driver as it runs on the model.
pub type ModelDriver = Driver<SmmuModel, ModelRegion, ModelPlatform>;

/// The suite's harness on the model.
#[derive(Debug)]
pub struct ModelHarness {
    model: SmmuModel,
    memory: PhysicalMemory,
    driver: ModelDriver,
    function: PcieFunction,
    tables: Option<ModelTables>,
    notes: Vec<String>,
}

impl ModelHarness {
    /// A model configured by `config`, brought up by the real driver, with a function at
    /// [`STREAM`]: `edu`-like for an SMMU without substreams, PASID/ATS/PRI-capable otherwise.
    ///
    /// # Errors
    ///
    /// What the driver's bring-up met.
    pub fn new(config: ModelConfig) -> Result<Self, DriverError> {
        let function = if config.features.ssidsize == 0 {
            FunctionConfig::EDU_LIKE
        } else {
            // Software grants no more PRI credits than the PRI queue has entries (chapter 8).
            FunctionConfig {
                pri_credits: PRI_QUEUE_ENTRIES,
                ..FunctionConfig::SVA_CAPABLE
            }
        };
        Self::with_function(config, function)
    }

    /// As [`ModelHarness::new`], with a function configured by `function`.
    ///
    /// # Errors
    ///
    /// What the driver's bring-up met.
    pub fn with_function(
        config: ModelConfig,
        function: FunctionConfig,
    ) -> Result<Self, DriverError> {
        let memory = PhysicalMemory::with_ram(RAM_BASE, RAM_BYTES);
        let model = SmmuModel::new(config, &memory);
        let regions = DriverMemory {
            stream_table_l1: memory.region(RAM_BASE, 2048),
            stream_table_l2_pool: memory.region(RAM_BASE + 0x10_0000, 4 * 16384),
            command_queue: memory.region(RAM_BASE + 0x20_0000, 4096),
            event_queue: memory.region(RAM_BASE + 0x21_0000, 64 * 32),
            pri_queue: Some(memory.region(RAM_BASE + 0x22_0000, PRI_QUEUE_ENTRIES as usize * 16)),
        };
        let driver = Driver::new(
            model.clone(),
            regions,
            ModelPlatform::default(),
            DriverConfig::DEFAULT,
        )?;
        let function = model.attach_function(STREAM, function);
        let tables = Some(ModelTables::new(
            &memory,
            DOMAIN_TABLES,
            DOMAIN_TABLE_PAGES * PAGE_BYTES,
        ));
        Ok(Self {
            model,
            memory,
            driver,
            function,
            tables,
            notes: Vec::new(),
        })
    }

    /// The model.
    #[must_use]
    pub fn model(&self) -> &SmmuModel {
        &self.model
    }

    /// The DMA master.
    #[must_use]
    pub fn function(&self) -> &PcieFunction {
        &self.function
    }

    /// The notes cases left, formatted.
    #[must_use]
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    fn page(index: usize) -> u64 {
        TEST_PAGES + index as u64 * PAGE_BYTES
    }
}

fn dma_result(report: DmaReport) -> DmaResult {
    DmaResult {
        faulted: Some(report.transactions - report.completed),
    }
}

impl Harness for ModelHarness {
    type Registers = SmmuModel;
    type Memory = ModelRegion;
    type Platform = ModelPlatform;
    type Tables = ModelTables;

    fn driver(&mut self) -> &mut ModelDriver {
        &mut self.driver
    }

    fn stream(&self) -> StreamId {
        StreamId(STREAM)
    }

    fn device(&self) -> DeviceCapabilities {
        let function = self.function.function_config();
        DeviceCapabilities {
            pasid: function.pasid,
            ats: function.ats,
            pri: function.pri,
            keeps_stale_entries: true,
            invalidation_waits_for_sync: self.model.config().invalidation
                == InvalidationTiming::AtSync,
        }
    }

    fn page_count(&self) -> usize {
        TEST_PAGE_COUNT
    }

    fn page_address(&self, index: usize) -> PhysAddr {
        PhysAddr(Self::page(index))
    }

    fn read_word(&self, page: usize, word: usize) -> u64 {
        self.memory
            .read_u64(Self::page(page) + word as u64 * 8)
            .unwrap_or(0)
    }

    fn write_word(&mut self, page: usize, word: usize, value: u64) {
        let _ = self
            .memory
            .write_u64(Self::page(page) + word as u64 * 8, value);
    }

    fn barrier(&self) {}

    fn dma(
        &mut self,
        direction: Direction,
        iova: u64,
        length: u64,
        ssid: Option<SubstreamId>,
    ) -> Result<DmaResult, HarnessError> {
        if ssid.is_some() && !self.function.function_config().pasid {
            return Err(HarnessError::Unsupported);
        }
        let length = usize::try_from(length).map_err(|_| HarnessError::DeviceFailed)?;
        let ssid = ssid.map(|s| s.0);
        let report = match direction {
            Direction::RamToDevice => self.function.copy_to_buffer(ssid, iova, length),
            Direction::DeviceToRam => self.function.copy_from_buffer(ssid, iova, length),
        }
        .map_err(|_| HarnessError::DeviceFailed)?;
        Ok(dma_result(report))
    }

    fn transaction_bytes(&self) -> u64 {
        u64::from(self.function.function_config().max_payload)
    }

    fn domain_tables(&mut self) -> Option<ModelTables> {
        self.tables.take()
    }

    fn note(&mut self, message: &'static str, values: &[u64]) {
        self.notes.push(format!("{message}: {values:#x?}"));
    }

    fn store_behind_driver(&mut self, address: PhysAddr, value: u64) -> Result<(), HarnessError> {
        self.memory
            .write_u64(address.0, value)
            .map_err(|_| HarnessError::Unsupported)
    }

    fn ats_translate(
        &mut self,
        ssid: Option<SubstreamId>,
        iova: u64,
        write: bool,
    ) -> Result<AtsResult, Unsupported> {
        let completion = self
            .function
            .ats_translate(ssid.map(|s| s.0), iova, write)
            .map_err(|_| Unsupported)?;
        Ok(match completion {
            AtsCompletion::Success {
                pa, read, write, ..
            } => AtsResult::Success { pa, read, write },
            AtsCompletion::UnsupportedRequest => AtsResult::UnsupportedRequest,
            AtsCompletion::CompleterAbort => AtsResult::CompleterAbort,
        })
    }

    fn translated_write(
        &mut self,
        ssid: Option<SubstreamId>,
        iova: u64,
        length: u64,
    ) -> Result<Option<DmaResult>, Unsupported> {
        if !self.function.function_config().ats {
            return Err(Unsupported);
        }
        let length = usize::try_from(length).map_err(|_| Unsupported)?;
        let data: Vec<u8> = self.function.buffer().into_iter().take(length).collect();
        match self
            .function
            .translated_write(ssid.map(|s| s.0), iova, &data)
        {
            Ok(report) => Ok(Some(dma_result(report))),
            Err(FunctionError::AtcMiss) => Ok(None),
            Err(_) => Err(Unsupported),
        }
    }

    fn atc_entries(&mut self) -> Result<usize, Unsupported> {
        if !self.function.function_config().ats {
            return Err(Unsupported);
        }
        Ok(self.function.atc().len())
    }

    fn page_request_group(
        &mut self,
        ssid: Option<SubstreamId>,
        pages: &[PageRequestSpec],
    ) -> Result<Option<u16>, Unsupported> {
        if !self.function.function_config().pri {
            return Err(Unsupported);
        }
        let requests: Vec<PageRequest> = pages
            .iter()
            .map(|p| PageRequest {
                address: p.address,
                read: true,
                write: p.write,
                ..PageRequest::default()
            })
            .collect();
        Ok(self
            .function
            .page_request_group(ssid.map(|s| s.0), &requests)
            .ok())
    }

    fn stop_marker(&mut self, ssid: SubstreamId) -> Result<(), Unsupported> {
        self.function
            .stop_marker(ssid.0)
            .map(|_| ())
            .map_err(|_| Unsupported)
    }

    fn handle_responses(
        &mut self,
        report: &mut dyn FnMut(DeviceReaction),
    ) -> Result<(), Unsupported> {
        if !self.function.function_config().pri {
            return Err(Unsupported);
        }
        for handled in self.function.handle_responses() {
            report(match handled {
                ResponseHandled::Retried {
                    group,
                    response,
                    completions,
                } => {
                    let translated = group
                        .pages
                        .iter()
                        .zip(&completions)
                        .filter(|(page, completion)| {
                            matches!(completion, AtsCompletion::Success { read: true, write, .. }
                                if *write || !page.write)
                        })
                        .count();
                    DeviceReaction::Retried {
                        prg_index: response.prg_index,
                        pages: u32::try_from(group.pages.len()).unwrap_or(u32::MAX),
                        translated: u32::try_from(translated).unwrap_or(u32::MAX),
                    }
                }
                ResponseHandled::GaveUp { response, .. } => DeviceReaction::GaveUp {
                    prg_index: response.prg_index,
                },
                ResponseHandled::PriStopped { response, .. } => DeviceReaction::PriStopped {
                    prg_index: response.prg_index,
                },
                ResponseHandled::Unexpected { response } => DeviceReaction::Unexpected {
                    prg_index: response.prg_index,
                },
            });
        }
        Ok(())
    }

    fn reset_pri(&mut self) -> Result<(), Unsupported> {
        if !self.function.function_config().pri {
            return Err(Unsupported);
        }
        self.function.reset_pri();
        Ok(())
    }

    fn ignore_pri_credits(&mut self, ignore: bool) -> Result<(), Unsupported> {
        if !self.function.function_config().pri {
            return Err(Unsupported);
        }
        self.function.reconfigure(|c| c.respect_credits = !ignore);
        Ok(())
    }
}
