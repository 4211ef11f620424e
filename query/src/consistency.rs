//! A consistency token as text, for the interfaces that carry strings rather than messages: Postgres's
//! `SET fjord.wait_for = '<token>'` and Flight SQL's `x-fjord-wait-for` header. The text is the region,
//! then each partition's offset: `eu-north:0=120,3=77` (`fjord append` prints it).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::QueryError;

/// The longest token text accepted, bytes: room for thousands of partitions, and a bound on what a client
/// can make a node parse.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Read your writes: the offsets (per partition, the offset after a client's last write) a node must
/// have applied before it answers, in the region that gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
    /// The region whose offsets these are (empty: not said, as an older client sends it).
    pub region: String,
    /// Partition → the offset after the client's last write there.
    pub offsets: BTreeMap<u32, u64>,
}

impl ConsistencyToken {
    /// The offsets to wait for on a node of `region`: a token from another region names offsets of other
    /// logs, and waiting for them would be meaningless.
    pub fn offsets_in(&self, region: &str) -> Result<&BTreeMap<u32, u64>, QueryError> {
        if !self.region.is_empty() && self.region != region {
            return Err(QueryError::ForeignToken { token: self.region.clone(), region: region.to_owned() });
        }
        Ok(&self.offsets)
    }
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.region)?;
        for (i, (partition, offset)) in self.offsets.iter().enumerate() {
            let separator = if i == 0 { "" } else { "," };
            write!(f, "{separator}{partition}={offset}")?;
        }
        Ok(())
    }
}

impl FromStr for ConsistencyToken {
    type Err = QueryError;

    fn from_str(text: &str) -> Result<Self, QueryError> {
        let bad = |why: &str| QueryError::BadToken(format!("{why}; expected `<region>:<partition>=<offset>,…`"));
        if text.len() > MAX_TOKEN_BYTES {
            return Err(bad(&format!("the token is {} bytes, over the limit of {MAX_TOKEN_BYTES}", text.len())));
        }
        let (region, offsets) = text.trim().split_once(':').ok_or_else(|| bad("no `:` after the region"))?;
        let mut token = ConsistencyToken { region: region.to_owned(), offsets: BTreeMap::new() };
        for pair in offsets.split(',').filter(|pair| !pair.is_empty()) {
            let (partition, offset) = pair.split_once('=').ok_or_else(|| bad(&format!("{pair:?} has no `=`")))?;
            let partition = partition.trim().parse().map_err(|_| bad(&format!("{partition:?} is not a partition")))?;
            let offset = offset.trim().parse().map_err(|_| bad(&format!("{offset:?} is not an offset")))?;
            if token.offsets.insert(partition, offset).is_some() {
                return Err(bad(&format!("partition {partition} appears twice")));
            }
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_what_it_prints_and_refuses_garbage() {
        let token = ConsistencyToken { region: "eu-north".to_owned(), offsets: BTreeMap::from([(0, 120), (3, 77)]) };
        assert_eq!(token.to_string(), "eu-north:0=120,3=77");
        assert_eq!(token.to_string().parse::<ConsistencyToken>().unwrap(), token);
        assert_eq!("x:".parse::<ConsistencyToken>().unwrap().offsets, BTreeMap::new());
        for bad in ["eu-north", "r:0", "r:a=1", "r:0=-1", "r:0=1,0=2"] {
            assert!(matches!(bad.parse::<ConsistencyToken>(), Err(QueryError::BadToken(_))), "{bad}");
        }
        assert!(matches!(token.offsets_in("us-east"), Err(QueryError::ForeignToken { .. })));
        assert_eq!(token.offsets_in("eu-north").unwrap().len(), 2);
    }
}
