//! Trait abstractions of signing operations.

use crate::Timestamp;
use crate::errors::*;
use std::fmt::Debug;
use std::io;

/// Signing trait to be implement for RPM signing.
pub trait Signing: Debug
where
    Self::Signature: AsRef<[u8]>,
{
    type Signature;
    fn sign(&self, data: impl io::Read, t: Timestamp) -> Result<Self::Signature, Error>;
}

impl<T, S> Signing for &T
where
    T: Signing<Signature = S>,
    S: AsRef<[u8]>,
{
    type Signature = S;
    fn sign(&self, data: impl io::Read, t: Timestamp) -> Result<Self::Signature, Error> {
        T::sign(self, data, t)
    }
}

/// Verification trait to be implement for RPM signature verification.
pub trait Verifying: Debug
where
    Self::Signature: AsRef<[u8]>,
{
    type Signature;
    fn verify(&self, data: impl io::Read, signature: &[u8]) -> Result<(), Error>;
}

impl<T, S> Verifying for &T
where
    T: Verifying<Signature = S>,
    S: AsRef<[u8]>,
{
    type Signature = S;
    fn verify(&self, data: impl io::Read, signature: &[u8]) -> Result<(), Error> {
        T::verify(self, data, signature)
    }
}

/// Implement unreachable signer for empty tuple `()`
impl<T> Signing for std::marker::PhantomData<T> {
    type Signature = Vec<u8>;
    fn sign(&self, _data: impl io::Read, _t: Timestamp) -> Result<Self::Signature, Error> {
        unreachable!("you need to implement `sign` of the `Signing` trait")
    }
}

/// Implement unreachable verifier for the empty tuple`()`
impl<T> Verifying for std::marker::PhantomData<T> {
    type Signature = Vec<u8>;
    fn verify(&self, _data: impl io::Read, _x: &[u8]) -> Result<(), Error> {
        unreachable!("you need to implement `verify` of the `Verifying` trait")
    }
}
