//! The tantivy index of the tracks: its schema, a document per track, and
//! the queries (the query parser over the tag fields, bounded results).

use std::ops::Bound;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::query::{AllQuery, Query, QueryParser, RangeQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::tokenizer::{AsciiFoldingFilter, LowerCaser, SimpleTokenizer, TextAnalyzer};
use tantivy::{Index, IndexReader, ReloadPolicy, TantivyDocument, Term};

use crate::catalog::Track;

/// The index format: a change (fields, tokenizer) makes older indexes
/// "of another version", rebuilt from the catalog.
pub const INDEX_FORMAT: u32 = 1;
/// The tokenizer of the text fields: words, lower case, accents folded
/// (`bjork` finds Björk, and so does `björk`).
const TOKENIZER: &str = "musicfs";

/// The fields, by name (as the query syntax names them).
#[derive(Clone)]
pub struct Fields {
    pub ino: Field,
    pub parent: Field,
    pub path: Field,
    pub artist: Field,
    pub albumartist: Field,
    pub album: Field,
    pub title: Field,
    pub genre: Field,
    pub composer: Field,
    pub format: Field,
    pub origin: Field,
    pub year: Field,
    pub date: Field,
    pub track: Field,
    pub disc: Field,
    pub duration: Field,
    pub bitrate: Field,
    pub added: Field,
}

/// The schema and its fields.
pub fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let stored_text = text.clone().set_stored();
    let num = INDEXED | FAST;
    let fields = Fields {
        ino: b.add_u64_field("ino", INDEXED | STORED | FAST),
        parent: b.add_u64_field("parent", INDEXED),
        path: b.add_text_field("path", stored_text.clone()),
        artist: b.add_text_field("artist", stored_text.clone()),
        albumartist: b.add_text_field("albumartist", text.clone()),
        album: b.add_text_field("album", text.clone()),
        title: b.add_text_field("title", stored_text),
        genre: b.add_text_field("genre", text.clone()),
        composer: b.add_text_field("composer", text.clone()),
        format: b.add_text_field("format", text.clone()),
        origin: b.add_text_field("origin", text),
        year: b.add_u64_field("year", num.clone()),
        date: b.add_u64_field("date", num.clone()),
        track: b.add_u64_field("track", num.clone()),
        disc: b.add_u64_field("disc", num.clone()),
        duration: b.add_u64_field("duration", num.clone() | STORED),
        bitrate: b.add_u64_field("bitrate", num.clone()),
        added: b.add_u64_field("added", num),
    };
    (b.build(), fields)
}

/// Registers the tokenizer (every open: tantivy keeps only its name).
pub fn register_tokenizer(index: &Index) {
    let analyzer = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build();
    index.tokenizers().register(TOKENIZER, analyzer);
}

/// What each commit of the index records (tantivy's commit payload).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub format: u32,
    /// The catalog's generation (a rebuilt catalog has another).
    pub generation: u64,
    /// The last catalog commit whose changes the index holds.
    pub seq: u64,
}

/// The document of a track. `origin` is the origin's path or URL.
pub fn document(f: &Fields, t: &Track, origin: &str) -> TantivyDocument {
    let rec = &t.entry.rec;
    let tags = &rec.tags;
    let mut d = TantivyDocument::default();
    d.add_u64(f.ino, t.ino);
    d.add_u64(f.parent, t.parent);
    d.add_text(f.path, &t.path);
    let text = |d: &mut TantivyDocument, field: Field, v: &Option<String>| {
        if let Some(v) = v {
            d.add_text(field, v);
        }
    };
    text(&mut d, f.artist, &tags.artist);
    text(&mut d, f.albumartist, &tags.album_artist);
    text(&mut d, f.album, &tags.album);
    text(&mut d, f.title, &tags.title);
    text(&mut d, f.genre, &tags.genre);
    text(&mut d, f.composer, &tags.composer);
    text(&mut d, f.format, &rec.format);
    d.add_text(f.origin, origin);
    for (field, v) in [
        (f.year, tags.year),
        (f.date, tags.year),
        (f.track, tags.track),
        (f.disc, tags.disc),
        (f.bitrate, rec.props.bitrate_kbps),
    ] {
        if let Some(v) = v {
            d.add_u64(field, u64::from(v));
        }
    }
    d.add_u64(f.duration, rec.props.duration_ms / 1000);
    d.add_u64(
        f.added,
        u64::try_from(t.first_seen_ns / 1_000_000_000).unwrap_or(0),
    );
    d
}

/// A match: the track's inode and tree path, and what a playlist says of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub ino: u64,
    pub path: String,
    pub artist: String,
    pub title: String,
    pub duration_s: u64,
}

/// What is searched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Search {
    /// A query in tantivy's syntax.
    Query(String),
    /// Every track.
    All,
    /// Tracks first seen at or after this time (s since the epoch).
    AddedSince(u64),
}

/// An open index: the reader, and the parser over the tag fields.
pub struct Searchable {
    pub index: Index,
    pub reader: IndexReader,
    pub fields: Fields,
}

impl Searchable {
    pub fn open(dir: &Path) -> Result<Searchable> {
        let index = Index::open_in_dir(dir)
            .with_context(|| format!("cannot open the search index {}", dir.display()))?;
        Self::from_index(index)
    }

    pub fn from_index(index: Index) -> Result<Searchable> {
        register_tokenizer(&index);
        let (expected, fields) = schema();
        if index.schema() != expected {
            anyhow::bail!("the search index has another schema");
        }
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .context("cannot read the search index")?;
        Ok(Searchable {
            index,
            reader,
            fields,
        })
    }

    /// The payload of the last commit (None: none, or not ours).
    pub fn payload(&self) -> Option<Payload> {
        let metas = self.index.load_metas().ok()?;
        serde_json::from_str(metas.payload.as_deref()?).ok()
    }

    /// Parses a query (the error says why it is not one).
    pub fn parse(&self, query: &str) -> Result<Box<dyn Query>> {
        let f = &self.fields;
        let mut parser = QueryParser::for_index(
            &self.index,
            vec![
                f.artist,
                f.albumartist,
                f.album,
                f.title,
                f.genre,
                f.composer,
            ],
        );
        parser.set_conjunction_by_default();
        parser.parse_query(query).map_err(|e| anyhow!("{e}"))
    }

    /// At most `limit` matches of `search`, in inode order (the order in
    /// which the tree first saw them).
    pub fn search(&self, search: &Search, limit: usize) -> Result<Vec<Hit>> {
        let query: Box<dyn Query> = match search {
            Search::Query(q) => self.parse(q)?,
            Search::All => Box::new(AllQuery),
            Search::AddedSince(t) => Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_u64(self.fields.added, *t)),
                Bound::Unbounded,
            )),
        };
        let searcher = self.reader.searcher();
        let top = searcher.search(
            &query,
            &TopDocs::with_limit(limit.max(1)).order_by_u64_field("ino", tantivy::Order::Asc),
        )?;
        let f = &self.fields;
        let mut hits = Vec::with_capacity(top.len());
        for (_, addr) in top {
            let d: TantivyDocument = searcher.doc(addr)?;
            let text = |field| {
                d.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            hits.push(Hit {
                ino: d.get_first(f.ino).and_then(|v| v.as_u64()).unwrap_or(0),
                path: text(f.path),
                artist: text(f.artist),
                title: text(f.title),
                duration_s: d
                    .get_first(f.duration)
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0),
            });
        }
        Ok(hits)
    }

    /// Documents in the index.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}
