//! FHIR search.
//!
//! The pure core, no I/O:
//! * [`search_params`]: [`SearchParamTable`], generated from the official R4 SearchParameter
//!   and CompartmentDefinition resources by `tools/gen_search_params.py`;
//! * [`mod@extract`]: resource → [`IndexEntry`] list;
//! * [`query`]: `name=value` pairs → [`SearchQuery`];
//! * [`matcher`]: evaluates a [`SearchQuery`] against resources, independently of any index;
//! * [`terms`]: index terms and the conditions on them.
//!
//! And the derived state: [`index`], the tantivy index (rebuildable from the ledger and the
//! sealed store). The index only proposes candidates; results are read from the sealed store and
//! confirmed by the matcher.

pub mod datetime;
pub mod extract;
pub mod index;
pub mod matcher;
pub mod normalize;
pub mod query;
pub mod reference;
pub mod search_params;
pub mod terms;

pub use extract::{IndexEntry, IndexValue, extract, extract_indexed, extract_param};
pub use matcher::{MatchContext, ResourceLookup, ResourceSet, matches, matches_with};
pub use query::{
    Chain, Filter, FilterValue, Include, Modifier, Prefix, QueryError, SearchQuery, SortKey, Summary, TokenSystem, TotalMode, parse_query,
};
pub use search_params::{ParamType, SearchParam, SearchParamTable};
