//! Building .tern files (feature `alloc`).

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::blocks::{
    pack_ternary2_row, pack_ternary3_row, quantize_int4_row, quantize_int8_row, BlockTernary2, BlockTernary3,
    NotTernary, TERNARY_BLOCK_WEIGHTS,
};
use crate::config::ModelConfig;
use crate::dtype::{tensor_bytes, ElementType, ScaleKind, Shape};
use crate::error::FormatError;
use crate::layout::{
    section, tokenizer_kind, ALIGN, HEADER_BYTES, MAGIC, MAX_SECTIONS, MAX_TENSORS, NO_LAYER, SECTION_ENTRY_BYTES,
    TENSOR_ENTRY_BYTES, VERSION,
};
use crate::le::Writer;
use crate::tensor::Role;

/// One tensor ready to be written: packed bytes plus f32 scales.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    pub name: String,
    pub role: Role,
    pub layer: Option<u32>,
    pub dtype: ElementType,
    pub scale: ScaleKind,
    pub shape: Shape,
    pub data: Vec<u8>,
    pub scales: Vec<f32>,
}

/// Ternary packing layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TernaryLayout {
    TwoBit,
    Base3,
}

impl TensorData {
    /// Checks what the parser checks of one entry: lengths against type, granularity and shape, the group
    /// size, the name, and the layer index against the role.
    pub fn validate(&self) -> Result<(), FormatError> {
        // The parser's own decoding of the on-disk (kind, group) pair, so both accept the same group sizes
        // (and a zero group never reaches the division in `ScaleKind::count`).
        let (kind, group) = self.scale.code();
        ScaleKind::from_code(kind, group)?;
        let (data, scales) = tensor_bytes(self.dtype, self.scale, &self.shape)?;
        if self.data.len() as u64 != data {
            return Err(FormatError::LengthMismatch {
                expected: data,
                actual: self.data.len() as u64,
            });
        }
        if self.scales.len() as u64 * 4 != scales {
            return Err(FormatError::LengthMismatch {
                expected: scales / 4,
                actual: self.scales.len() as u64,
            });
        }
        if self.name.is_empty() || self.role.is_per_layer() != self.layer.is_some() {
            return Err(FormatError::BadShape);
        }
        if self.layer == Some(NO_LAYER) {
            return Err(FormatError::ReservedLayer);
        }
        u32::try_from(self.name.len()).map_err(|_| FormatError::FieldOverflow("tensor name length"))?;
        Ok(())
    }

    pub fn f32(name: &str, role: Role, layer: Option<u32>, shape: Shape, values: &[f32]) -> Self {
        Self {
            name: name.into(),
            role,
            layer,
            dtype: ElementType::F32,
            scale: ScaleKind::None,
            shape,
            data: bytemuck::cast_slice(values).to_vec(),
            scales: Vec::new(),
        }
    }

    pub fn f16(name: &str, role: Role, layer: Option<u32>, shape: Shape, values: &[f32]) -> Self {
        let data = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        Self {
            name: name.into(),
            role,
            layer,
            dtype: ElementType::F16,
            scale: ScaleKind::None,
            shape,
            data,
            scales: Vec::new(),
        }
    }

    /// int8 with per-row absmax scales, from f32 values (row-major, `shape.rows() x shape.cols()`).
    pub fn int8_rows(name: &str, role: Role, layer: Option<u32>, shape: Shape, values: &[f32]) -> Self {
        let cols = shape.cols() as usize;
        let mut data = vec![0i8; values.len()];
        let scales = values
            .chunks(cols)
            .zip(data.chunks_mut(cols))
            .map(|(row, out)| quantize_int8_row(row, out))
            .collect();
        Self {
            name: name.into(),
            role,
            layer,
            dtype: ElementType::Int8,
            scale: ScaleKind::PerRow,
            shape,
            data: bytemuck::cast_slice(&data).to_vec(),
            scales,
        }
    }

    /// int4 with per-group absmax scales, from f32 values.
    pub fn int4_groups(name: &str, role: Role, layer: Option<u32>, shape: Shape, group: u32, values: &[f32]) -> Self {
        let cols = shape.cols() as usize;
        let row_bytes = cols.div_ceil(2);
        let groups = cols.div_ceil(group as usize);
        let rows = values.len() / cols.max(1);
        let mut data = vec![0u8; rows * row_bytes];
        let mut scales = vec![0f32; rows * groups];
        for ((row, out), sc) in values
            .chunks(cols)
            .zip(data.chunks_mut(row_bytes))
            .zip(scales.chunks_mut(groups))
        {
            quantize_int4_row(row, group as usize, out, sc);
        }
        Self {
            name: name.into(),
            role,
            layer,
            dtype: ElementType::Int4,
            scale: ScaleKind::PerGroup(group),
            shape,
            data,
            scales,
        }
    }

    /// Ternary weights (each in {-1, 0, 1}, row-major) packed in `layout`, with the given scales.
    pub fn ternary(
        name: &str,
        role: Role,
        layer: Option<u32>,
        shape: Shape,
        layout: TernaryLayout,
        weights: &[i8],
        scale: ScaleKind,
        scales: Vec<f32>,
    ) -> Result<Self, NotTernary> {
        let cols = shape.cols() as usize;
        let blocks_per_row = cols.div_ceil(TERNARY_BLOCK_WEIGHTS);
        let rows = weights.len() / cols.max(1);
        let (dtype, data) = match layout {
            TernaryLayout::TwoBit => {
                let mut blocks = vec![BlockTernary2 { qs: [0; 16] }; rows * blocks_per_row];
                for (r, (row, out)) in weights.chunks(cols).zip(blocks.chunks_mut(blocks_per_row)).enumerate() {
                    pack_ternary2_row(row, out).map_err(|e| NotTernary {
                        index: r * cols + e.index,
                        value: e.value,
                    })?;
                }
                (ElementType::Ternary2, bytemuck::cast_slice(&blocks).to_vec())
            }
            TernaryLayout::Base3 => {
                let mut blocks = vec![BlockTernary3 { qs: [0; 13] }; rows * blocks_per_row];
                for (r, (row, out)) in weights.chunks(cols).zip(blocks.chunks_mut(blocks_per_row)).enumerate() {
                    pack_ternary3_row(row, out).map_err(|e| NotTernary {
                        index: r * cols + e.index,
                        value: e.value,
                    })?;
                }
                (ElementType::Ternary3, bytemuck::cast_slice(&blocks).to_vec())
            }
        };
        Ok(Self {
            name: name.into(),
            role,
            layer,
            dtype,
            scale,
            shape,
            data,
            scales,
        })
    }
}

/// Accumulates the parts of a model and serialises them (FORMAT.md).
#[derive(Clone, Debug)]
pub struct ModelWriter {
    config: ModelConfig,
    metadata: Vec<(String, String)>,
    tokenizer_json: Option<Vec<u8>>,
    chat_template: Option<String>,
    tensors: Vec<TensorData>,
}

impl ModelWriter {
    pub fn new(config: ModelConfig) -> Self {
        Self {
            config,
            metadata: Vec::new(),
            tokenizer_json: None,
            chat_template: None,
            tensors: Vec::new(),
        }
    }
    pub fn metadata(&mut self, key: &str, value: &str) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.into(), value.into()));
        self
    }
    /// Embeds a Hugging Face `tokenizer.json`.
    pub fn tokenizer_json(&mut self, json: Vec<u8>) -> &mut Self {
        self.tokenizer_json = Some(json);
        self
    }
    pub fn chat_template(&mut self, template: &str) -> &mut Self {
        self.chat_template = Some(template.into());
        self
    }
    /// Adds a tensor after checking it as the parser will (`TensorData::validate`); names must be unique and
    /// there are at most `MAX_TENSORS`.
    pub fn add_tensor(&mut self, t: TensorData) -> Result<&mut Self, FormatError> {
        t.validate()?;
        let count = self.tensors.len() as u64 + 1;
        if count > MAX_TENSORS {
            return Err(FormatError::TooManyTensors(count));
        }
        if self.tensors.iter().any(|e| e.name == t.name) {
            return Err(FormatError::DuplicateTensorName {
                // Below MAX_TENSORS, checked above.
                index: u32::try_from(self.tensors.len()).map_err(|_| FormatError::TooManyTensors(count))?,
            });
        }
        self.tensors.push(t);
        Ok(self)
    }
    pub fn tensors(&self) -> &[TensorData] {
        &self.tensors
    }

    /// Serialises the model. The result parses with `ModelView::parse`: whatever the parser would reject
    /// (config invariants, tensor count, lengths past their 32-bit fields, a non-UTF-8 tokenizer) is an error
    /// here instead.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        let encoded = self.encode()?;
        let mut out = encoded.head;
        out.reserve(encoded.file_len.saturating_sub(out.len()));
        for (t, &(data_off, scales_off)) in self.tensors.iter().zip(&encoded.tensor_offsets) {
            out.resize(data_off, 0);
            out.extend_from_slice(&t.data);
            if !t.scales.is_empty() {
                out.resize(scales_off, 0);
                out.extend_from_slice(bytemuck::cast_slice(&t.scales));
            }
        }
        out.resize(encoded.file_len, 0);
        Ok(out)
    }

    /// Writes the model to `path` atomically (a temporary file renamed over it), the same bytes as
    /// [`ModelWriter::to_bytes`] but streamed: only the header and sections are built in memory, never a second
    /// copy of the tensor data.
    #[cfg(feature = "std")]
    pub fn write_file(&self, path: impl AsRef<std::path::Path>) -> Result<u64, crate::mapped::WriteError> {
        use std::io::Write;
        let encoded = self.encode()?;
        crate::mapped::write_atomic_with(path, |f| {
            let mut at = 0usize;
            let mut put = |f: &mut dyn Write, offset: usize, bytes: &[u8]| -> std::io::Result<()> {
                // Zero padding up to the aligned start, then the bytes.
                const ZEROS: [u8; ALIGN] = [0; ALIGN];
                while at < offset {
                    let n = (offset - at).min(ALIGN);
                    f.write_all(&ZEROS[..n])?;
                    at += n;
                }
                f.write_all(bytes)?;
                at += bytes.len();
                Ok(())
            };
            put(f, 0, &encoded.head)?;
            for (t, &(data_off, scales_off)) in self.tensors.iter().zip(&encoded.tensor_offsets) {
                put(f, data_off, &t.data)?;
                if !t.scales.is_empty() {
                    put(f, scales_off, bytemuck::cast_slice(&t.scales))?;
                }
            }
            put(f, encoded.file_len, &[])
        })?;
        Ok(encoded.file_len as u64)
    }

    /// The file's layout: header, section table and sections as bytes, where each tensor's data and scales go,
    /// and the file length.
    fn encode(&self) -> Result<Encoded, FormatError> {
        self.config.validate()?;
        let field = |n: usize, what: &'static str| u32::try_from(n).map_err(|_| FormatError::FieldOverflow(what));
        let tensor_count = self.tensors.len() as u64;
        if tensor_count > MAX_TENSORS {
            return Err(FormatError::TooManyTensors(tensor_count));
        }
        // Section payloads.
        let mut config = Vec::new();
        self.config.encode(&mut Writer::new(&mut config));
        let mut meta = Vec::new();
        {
            let mut w = Writer::new(&mut meta);
            w.u32(field(self.metadata.len(), "metadata entry count")?);
            for (k, v) in &self.metadata {
                w.u32(field(k.len(), "metadata key length")?);
                w.bytes(k.as_bytes());
                w.u32(field(v.len(), "metadata value length")?);
                w.bytes(v.as_bytes());
            }
        }
        let mut strings = Vec::new();
        let mut name_spans = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            name_spans.push((
                field(strings.len(), "tensor name offset")?,
                field(t.name.len(), "tensor name length")?,
            ));
            strings.extend_from_slice(t.name.as_bytes());
        }
        let mut sections: Vec<(u32, Vec<u8>)> = vec![(section::CONFIG, config), (section::METADATA, meta)];
        if let Some(json) = &self.tokenizer_json {
            if core::str::from_utf8(json).is_err() {
                return Err(FormatError::BadTokenizer("tokenizer.json is not UTF-8"));
            }
            let mut b = Vec::with_capacity(json.len() + 4);
            b.extend_from_slice(&tokenizer_kind::HF_JSON.to_le_bytes());
            b.extend_from_slice(json);
            sections.push((section::TOKENIZER, b));
        }
        if let Some(t) = &self.chat_template {
            sections.push((section::CHAT_TEMPLATE, t.as_bytes().to_vec()));
        }
        sections.push((section::STRINGS, strings));
        let dir_len = 8 + self.tensors.len() * TENSOR_ENTRY_BYTES;
        sections.push((section::TENSORS, vec![0u8; dir_len])); // filled once offsets are known

        let section_count = field(sections.len(), "section count")?;
        if section_count > MAX_SECTIONS {
            return Err(FormatError::BadHeader("section count must be 1 to 64"));
        }

        // Lay out: header, section table, sections, tensors — every start 64-aligned.
        // The end of `len` bytes placed at `at`, rounded up to the next start (a 32-bit target's usize can
        // overflow on a multi-gigabyte model).
        let place = |at: usize, len: usize| {
            at.checked_add(len)
                .and_then(|end| end.checked_next_multiple_of(ALIGN))
                .ok_or(FormatError::SizeOverflow)
        };
        let table_len = sections.len() * SECTION_ENTRY_BYTES;
        let mut cursor = place(HEADER_BYTES, table_len)?;
        let mut section_offsets = Vec::with_capacity(sections.len());
        for (_, b) in &sections {
            section_offsets.push(cursor);
            cursor = place(cursor, b.len())?;
        }
        let mut tensor_offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let data = cursor;
            cursor = place(cursor, t.data.len())?;
            let scales = if t.scales.is_empty() { 0 } else { cursor };
            if !t.scales.is_empty() {
                cursor = place(cursor, core::mem::size_of_val(t.scales.as_slice()))?;
            }
            tensor_offsets.push((data, scales));
        }
        let file_len = cursor;

        // Directory.
        let mut dir = Vec::with_capacity(dir_len);
        {
            let mut w = Writer::new(&mut dir);
            w.u32(field(self.tensors.len(), "tensor count")?);
            w.u32(0);
            for ((t, &(name_off, name_len)), &(data_off, scales_off)) in
                self.tensors.iter().zip(&name_spans).zip(&tensor_offsets)
            {
                w.u32(name_off);
                w.u32(name_len);
                w.u32(t.role as u32);
                w.u32(t.layer.unwrap_or(NO_LAYER));
                w.u32(t.dtype as u32);
                w.u32(field(t.shape.dims().len(), "dimension count")?);
                for i in 0..4 {
                    w.u64(t.shape.dims().get(i).copied().unwrap_or(0));
                }
                let (kind, group) = t.scale.code();
                w.u32(kind);
                w.u32(group);
                w.u64(data_off as u64);
                w.u64(t.data.len() as u64);
                w.u64(scales_off as u64);
                w.u64(4 * t.scales.len() as u64);
                let mut h = crc32fast::Hasher::new();
                h.update(&t.data);
                h.update(bytemuck::cast_slice(&t.scales));
                w.u32(h.finalize());
                w.u32(0);
                w.u64(0);
            }
        }
        if let Some(last) = sections.last_mut() {
            last.1 = dir;
        }

        let mut out = Vec::new();
        let mut table = Vec::with_capacity(table_len);
        {
            let mut w = Writer::new(&mut table);
            for ((kind, b), &off) in sections.iter().zip(&section_offsets) {
                w.u32(*kind);
                w.u32(crc32fast::hash(b));
                w.u64(off as u64);
                w.u64(b.len() as u64);
            }
        }
        {
            let mut w = Writer::new(&mut out);
            w.bytes(&MAGIC);
            w.u32(VERSION);
            w.u32(HEADER_BYTES as u32);
            w.u64(file_len as u64);
            w.u32(section_count);
            w.u32(0);
            w.u64(HEADER_BYTES as u64);
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&out[..40]);
        h.update(&table);
        out.extend_from_slice(&h.finalize().to_le_bytes());
        out.resize(HEADER_BYTES, 0);
        out.extend_from_slice(&table);
        for ((_, b), &off) in sections.iter().zip(&section_offsets) {
            out.resize(off, 0);
            out.extend_from_slice(b);
        }
        Ok(Encoded {
            head: out,
            tensor_offsets,
            file_len,
        })
    }
}

/// [`ModelWriter::encode`]'s result.
struct Encoded {
    /// Bytes `[0, end of the last section)`.
    head: Vec<u8>,
    /// Offsets of each tensor's data and scales (0 when it has none).
    tensor_offsets: Vec<(usize, usize)>,
    file_len: usize,
}
